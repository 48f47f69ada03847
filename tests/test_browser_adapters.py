"""Browser test of adapters in the layer picker (#15): in JupyterLab, a group is switched to LoRA in `LayerPicker`'s
dropdown, Apply is clicked, and the kernel's model has LoRA adapters on that group's layers, its own weights frozen, and
exactly the planned number of trainable weights. The shared harness (one JupyterLab server, Debian's Chromium driven by
Playwright, cell-by-cell runs, screenshots in `test_artifacts/`) is `tests/browser_utils.py`, its fixtures in `tests/conftest.py`.

Needs: `bash tests/install_browser.sh` (Chromium from apt) and the `playwright` pip package (dev requirements).
It fails, never skips, when either is missing."""
from browser_utils import expect, shot, cell, button, run_cell, tagged, no_widget_errors, wait_for  # the shared harness

NOTEBOOK = 'browser_adapters.ipynb'  # opened by the `page` fixture, its kernel started
SETUP, PICKER, GRAD = 1, 2, 3  # code cells of the notebook, by their index among all cells (cell 0 is markdown)

def test_picker_lora_in_jupyterlab(page):
    run_cell(page, SETUP, timeout=150)
    setup = tagged(page, SETUP, 'SETUP')
    assert setup['widgets'], "has_widget_frontend() is False in the JupyterLab kernel"
    assert setup['trainable'] == [2] and len(setup['groups']) == 3, setup
    run_cell(page, PICKER)
    pc = cell(page, PICKER)
    checks,hows = pc.locator('.widget-checkbox input[type=checkbox]'),pc.locator('.widget-dropdown select')
    expect(checks).to_have_count(3, timeout=30_000)
    assert hows.count() >= 3, "a 'how' dropdown per group"
    assert [hows.nth(k).input_value() for k in range(3)] == ['full']*3
    run_cell(page, GRAD)
    before = tagged(page, GRAD, 'GRAD')
    assert before['lora_layers'] == [] and before['trainable'][2] == 51 and before['trainable_groups'] == [2], before
    # Group 1 trains, through LoRA: tick it, choose 'lora', Apply
    checks.nth(1).check()
    hows.nth(1).select_option('lora')
    apply_btn = button(pc, 'Apply')
    lora_count = 16 + (8*8*9 + 16*8 + 32) + 51  # group 0's BatchNorm ('train' policy), group 1's adapters and BatchNorm, the head
    wait_for(lambda: f"{lora_count:,} of" in pc.inner_text(), 20, 'the preview to count the adapters exactly', lambda: pc.inner_text())
    shot(page, 'browser_adapters_1_lora_chosen', pc)
    apply_btn.click()
    wait_for(lambda: 'applied' in pc.inner_text(), 30, "'applied' in the picker", lambda: pc.inner_text())
    shot(page, 'browser_adapters_2_applied', pc)
    run_cell(page, GRAD)
    after = tagged(page, GRAD, 'GRAD')
    assert after['lora_layers'] == ['features.3.0'], after
    assert after['base_frozen'] is True, after
    # group 1: LoRA of rank 8 on its 8->16 3x3 conv (8*8*9 + 16*8) and its BatchNorm (the 'train' policy); the head as before
    assert after['trainable'][1:] == [8*8*9 + 16*8 + 32, 51], after
    assert after['trainable'] == after['planned'], after
    assert after['trainable_groups'] == [1, 2], after
    no_widget_errors(page)
