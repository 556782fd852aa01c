/**
 * Compact status-bar item: total VRAM in use (host RAM without a GPU); a click, or Enter or Space
 * when it has the focus, opens the sidebar.
 */

import { Widget } from '@lumino/widgets';

import {
  formatBytes,
  statusBarText,
  totalVram,
  usageFraction,
  usageLevel,
  UsageLevel
} from './format';
import { makeButton } from './button';
import { MetricsModel } from './model';

export class GpuMemoryStatus extends Widget {
  constructor(
    private readonly model: MetricsModel,
    onClick: () => void
  ) {
    super();
    this.addClass('q3j-status');
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
    this.node.textContent = statusBarText(metrics, error);
    let level: UsageLevel = 'unknown';
    if (metrics) {
      const vram = totalVram(metrics);
      level = vram
        ? usageLevel(usageFraction(vram.used, vram.total), options.thresholds)
        : usageLevel(usageFraction(metrics.host.used, metrics.host.total), options.thresholds);
    }
    this.node.dataset.level = level;
    const kernels = metrics?.kernels ?? [];
    const top = kernels.reduce<{ label: string; bytes: number } | null>((best, k) => {
      const bytes = k.gpu_memory_total ?? -1;
      return bytes > (best?.bytes ?? 0) ? { label: k.notebook_path ?? k.kernel_id, bytes } : best;
    }, null);
    const text = this.node.textContent;
    this.node.title = error
      ? `GPU memory: ${error.message}`
      : top
        ? `GPU memory — largest: ${top.label} (${formatBytes(top.bytes)}). Click for details.`
        : 'GPU memory — click for details.';
    // The title says what the item is and does; the text, the figure it shows now.
    this.node.setAttribute('aria-label', `${this.node.title} ${text}`);
  }
}
