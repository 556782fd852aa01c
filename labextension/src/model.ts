/**
 * One poller per browser tab, shared by the sidebar and the status bar.
 *
 * `@lumino/polling` backs off after errors and stands by while nothing shows the figures:
 * the panel hidden and the status bar off, or the whole tab hidden.
 */

import { ServerConnection } from '@jupyterlab/services';
import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IPoll, Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { fetchMetrics, MetricsRequestError } from './api';
import { DEFAULT_THRESHOLDS, IThresholds, normalizeThresholds } from './format';
import type { IMetrics, IMetricsError } from './metrics';

export interface IMetricsOptions {
  /** Poll interval (ms) while the sidebar is visible. */
  pollInterval: number;
  /** Poll interval (ms) while only the status bar shows figures; 0 stops polling then. */
  backgroundInterval: number;
  thresholds: IThresholds;
  showStatusBar: boolean;
}

export const DEFAULT_OPTIONS: IMetricsOptions = {
  pollInterval: 1000,
  backgroundInterval: 5000,
  thresholds: DEFAULT_THRESHOLDS,
  showStatusBar: true
};

/**
 * Bounds of the refresh intervals (ms), the `minimum`/`maximum` of `pollInterval` and
 * `backgroundInterval` in schema/plugin.json (`backgroundInterval` may also be 0: off).
 */
export const MIN_INTERVAL = 250;
export const MAX_INTERVAL = 600_000;

/** How far the poll backs off after errors, unless the interval itself is longer. */
const BACKOFF_MAX = 60_000;

function clampInterval(interval: number): number {
  return Math.min(MAX_INTERVAL, Math.max(MIN_INTERVAL, interval));
}

/** The options the settings ask for, each in its schema's range (a bad value: the default). */
export function readOptions(
  settings: Pick<ISettingRegistry.ISettings, 'get'> | null
): IMetricsOptions {
  if (!settings) {
    return DEFAULT_OPTIONS;
  }
  const get = (key: string): unknown => settings.get(key).composite;
  const interval = (key: string, fallback: number, offAllowed: boolean): number => {
    const value = get(key);
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
      return fallback;
    }
    return offAllowed && value === 0 ? 0 : clampInterval(value);
  };
  return {
    pollInterval: interval('pollInterval', DEFAULT_OPTIONS.pollInterval, false),
    backgroundInterval: interval('backgroundInterval', DEFAULT_OPTIONS.backgroundInterval, true),
    thresholds: normalizeThresholds(get('warningThreshold'), get('criticalThreshold')),
    showStatusBar: get('showStatusBar') !== false
  };
}

export class MetricsModel {
  constructor(
    private readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    this._poll = new Poll({
      auto: false,
      factory: () => this._refresh(),
      frequency: this._frequency(),
      name: 'qwen3-jupyter:metrics',
      standby: () => this._standby()
    });
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get metrics(): IMetrics | null {
    return this._metrics;
  }

  get error(): IMetricsError | null {
    return this._error;
  }

  get options(): IMetricsOptions {
    return this._options;
  }

  /** Whether the sidebar panel is showing; it decides the poll rate. */
  set panelVisible(visible: boolean) {
    if (visible === this._panelVisible) {
      return;
    }
    this._panelVisible = visible;
    this._poll.frequency = this._frequency();
    if (visible) {
      void this.refresh();
    }
  }

  /** How often the poll runs now: the interval of the visible view, and its backoff. */
  get frequency(): IPoll.Frequency {
    return this._poll.frequency;
  }

  get panelVisible(): boolean {
    return this._panelVisible;
  }

  setOptions(options: IMetricsOptions): void {
    this._options = options;
    this._poll.frequency = this._frequency();
    this._changed.emit();
  }

  start(): void {
    void this._poll.start();
  }

  /** Poll now (e.g. right after a cleanup) instead of waiting for the next tick. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private _frequency(): { interval: number; backoff: boolean; max: number } {
    const interval = clampInterval(
      this._panelVisible
        ? this._options.pollInterval
        : this._options.backgroundInterval || this._options.pollInterval
    );
    // `@lumino/polling` throws on an interval above `max`.
    return { interval, backoff: true, max: Math.max(BACKOFF_MAX, interval) };
  }

  private _standby(): boolean | 'when-hidden' {
    if (this._panelVisible) {
      return 'when-hidden';
    }
    const statusBarPolls = this._options.showStatusBar && this._options.backgroundInterval > 0;
    return statusBarPolls ? 'when-hidden' : true;
  }

  private async _refresh(): Promise<void> {
    try {
      this._metrics = await fetchMetrics(this.serverSettings, this._frequency().interval);
      this._error = null;
    } catch (reason) {
      this._error =
        reason instanceof MetricsRequestError
          ? reason.detail
          : { kind: 'server-error', status: null, message: String(reason) };
      this._changed.emit();
      throw reason;
    }
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _metrics: IMetrics | null = null;
  private _error: IMetricsError | null = null;
  private _options: IMetricsOptions = DEFAULT_OPTIONS;
  private _panelVisible = false;
  private _poll: Poll;
}
