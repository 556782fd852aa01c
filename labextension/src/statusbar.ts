/**
 * Compact status-bar item: the fullest GPU, "GPU 0 lost" when one could not be read, or host RAM
 * without a GPU; a click, or Enter or Space when it has the focus, opens the sidebar.
 */

import { Widget } from '@lumino/widgets';

import { statusBarLabel, statusBarState } from './format';
import { makeButton } from './button';
import { MetricsModel } from './model';

export class GpuMemoryStatus extends Widget {
  constructor(
    private readonly model: MetricsModel,
    onClick: () => void
  ) {
    super();
    this.addClass('q3j-status');
    // JupyterLab's own text items' font and 24 px line box, so the text sits on their baseline.
    this.addClass('jp-StatusBar-TextItem');
    makeButton(this.node, onClick);
    model.changed.connect(this._render, this);
    this._render();
  }

  dispose(): void {
    this.model.changed.disconnect(this._render, this);
    super.dispose();
  }

  private _render(): void {
    const { metrics, error, options } = this.model;
    const state = statusBarState(metrics, error, options.thresholds);
    this.node.textContent = state.text;
    this.node.dataset.level = state.level;
    this.node.title = state.title;
    // The title says what the item is and does; the text, the figure it shows now; and the
    // level, which base.css shows as a coloured mark before the text.
    this.node.setAttribute('aria-label', statusBarLabel(state));
  }
}
