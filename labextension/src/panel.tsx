/**
 * The "GPU memory" sidebar: a gauge per GPU (or host memory when there is none) and the running
 * notebooks, largest VRAM first, each with "Free memory" and "Shut down".
 *
 * It renders whatever the shared `MetricsModel` holds and never shows a blank panel: every
 * state without figures says why and what to do.
 */

import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { CleanupError } from './api';
import {
  errorState,
  formatBytes,
  formatPercent,
  formatUsedOfTotal,
  freeMemoryAction,
  gpuLabel,
  IEmptyState,
  IThresholds,
  kernelLabel,
  kernelNameParts,
  kernelVramText,
  kernelVramTooltip,
  levelWord,
  LOAD_EXTENSION_HINT,
  meterAria,
  noGpuState,
  noKernelsState,
  panelNotes,
  physicalSum,
  sortKernels,
  sparklinePoints,
  sparklineSummary,
  unreadGpus,
  unreadGpuState,
  usageFraction,
  usageLevel
} from './format';
import type { ICleanupReply, IKernelMetrics } from './metrics';
import { MetricsModel } from './model';
import {
  IRowMessage,
  IRowStatus,
  keepRowStatus,
  outcomeApplies,
  ROW_MESSAGE_TTL_MS,
  RowAction,
  rowAnnouncement,
  rowButtonLabels,
  rowButtons,
  rowStatus
} from './rows';

/** What the panel asks of the application; index.ts wires these to the service manager. */
export interface IKernelActions {
  freeMemory(kernel: IKernelMetrics): Promise<ICleanupReply>;
  /** Asks whether to shut `kernel` down; resolves false when the user cancelled. */
  confirmShutdown(kernel: IKernelMetrics): Promise<boolean>;
  shutdown(kernel: IKernelMetrics): Promise<void>;
  open(kernel: IKernelMetrics): void;
}

function EmptyState(props: { state: IEmptyState; tone?: string }): JSX.Element {
  return (
    <div className={`q3j-empty q3j-empty--${props.tone ?? 'info'}`} role="status">
      <div className="q3j-empty-title">{props.state.title}</div>
      <div className="q3j-empty-hint">{props.state.hint}</div>
    </div>
  );
}

/** Half the stroke width (base.css) and a bit: 0 and the total stay inside the clipped box. */
const SPARKLINE_INSET = 1;

function Sparkline(props: {
  values: (number | null)[];
  max: number;
  timestamps: number[];
}): JSX.Element | null {
  const width = 72;
  const height = 18;
  // One polyline per run of readings: a GPU that could not be read is a gap, not a drop to 0.
  const runs = sparklinePoints(props.values, props.max, width, height, SPARKLINE_INSET);
  if (runs.length === 0) {
    return null;
  }
  const summary = sparklineSummary(props.values, props.max, props.timestamps);
  return (
    <svg
      className="q3j-sparkline"
      viewBox={`0 0 ${width} ${height}`}
      width={width}
      height={height}
      preserveAspectRatio="none"
      // One reading alone between gaps (a dot) has no trend to tell: hidden then.
      {...(summary ? { role: 'img', 'aria-label': summary } : { 'aria-hidden': true })}
    >
      {summary ? <title>{summary}</title> : null}
      {runs.map((points, i) => (
        <polyline key={i} points={points} strokeLinecap="round" />
      ))}
    </svg>
  );
}

function Gauge(props: {
  label: string;
  used: number;
  total: number;
  thresholds: IThresholds;
  detail?: string;
  history?: (number | null)[];
  timestamps: number[];
  testId: string;
}): JSX.Element {
  const fraction = usageFraction(props.used, props.total);
  const level = usageLevel(fraction, props.thresholds);
  const word = levelWord(level);
  return (
    <div className={`q3j-gauge q3j-level-${level}`} data-testid={props.testId}>
      <div className="q3j-gauge-label" title={props.label}>
        {props.label}
      </div>
      <div
        className="q3j-bar"
        role="meter"
        aria-label={props.label}
        {...meterAria(props.used, props.total, props.thresholds)}
      >
        <div className="q3j-bar-fill" style={{ width: `${(fraction ?? 0) * 100}%` }} />
      </div>
      <div className="q3j-gauge-foot">
        <span className="q3j-gauge-value">
          {formatUsedOfTotal(props.used, props.total)} ({formatPercent(fraction)})
          {/* The level in words too, not in colour alone. */}
          {word ? (
            <>
              {' '}
              <span className="q3j-level-word">{word}</span>
            </>
          ) : null}
          {props.detail ? <span className="q3j-gauge-detail"> · {props.detail}</span> : null}
        </span>
        {props.history ? (
          <Sparkline values={props.history} max={props.total} timestamps={props.timestamps} />
        ) : null}
      </div>
    </div>
  );
}

function KernelRow(props: {
  kernel: IKernelMetrics;
  siblings: IKernelMetrics[];
  available: boolean;
  status: IRowStatus | undefined;
  onFree: () => void;
  onShutdown: () => void;
  onOpen: () => void;
}): JSX.Element {
  const { kernel, status } = props;
  const { freeDisabled, shutdownDisabled } = rowButtons(status);
  const labels = rowButtonLabels(kernel);
  const name = kernelNameParts(kernel, props.siblings);
  const nameLine = (
    <>
      <span className="q3j-kernel-name-line">
        {name.head ? <span className="q3j-name-head">{name.head}</span> : null}
        <span className="q3j-name-rest">
          {name.tail ? <span className="q3j-name-tail">{name.tail}</span> : null}
          <span className="q3j-name-end">{name.end}</span>
        </span>
      </span>
      {name.folder ? (
        // Cut at its start (base.css): the last folders are what tell two notebooks apart.
        <span className="q3j-kernel-folder">
          <span className="q3j-folder-text">{name.folder}</span>
        </span>
      ) : null}
    </>
  );
  return (
    <li className="q3j-kernel" data-kernel-id={kernel.kernel_id}>
      <div className="q3j-kernel-head">
        {kernel.notebook_path ? (
          <button
            className="q3j-kernel-name q3j-link"
            title={kernel.notebook_path}
            onClick={props.onOpen}
          >
            {nameLine}
          </button>
        ) : (
          // A console or a kernel with no session: no file to open, so no link.
          <span
            className="q3j-kernel-name"
            title={`${kernelLabel(kernel)} · kernel ${kernel.kernel_id}`}
          >
            {nameLine}
          </span>
        )}
        <span className={`q3j-kernel-state q3j-state-${kernel.execution_state}`}>
          {kernel.execution_state}
        </span>
      </div>
      <div className="q3j-kernel-figures">
        {props.available ? (
          <span className="q3j-kernel-vram" title={kernelVramTooltip(kernel)}>
            VRAM {kernelVramText(kernel, props.available)}
          </span>
        ) : null}
        <span
          className="q3j-kernel-rss"
          title="Resident host memory of the kernel and its children"
        >
          RSS {formatBytes(kernel.rss)}
        </span>
      </div>
      <div className="q3j-kernel-actions">
        {/* aria-disabled, not disabled: a disabled button drops the keyboard focus. */}
        <button
          className="jp-mod-styled q3j-free"
          aria-disabled={freeDisabled}
          aria-label={labels.free}
          title={freeMemoryAction(kernel).title}
          onClick={freeDisabled ? undefined : props.onFree}
        >
          Free memory
        </button>
        <button
          className="jp-mod-styled jp-mod-warn q3j-shutdown"
          aria-disabled={shutdownDisabled}
          aria-label={labels.shutdown}
          onClick={shutdownDisabled ? undefined : props.onShutdown}
        >
          Shut down
        </button>
      </div>
      {status ? (
        // No live region: the panel's own announces the message (this one is new each time).
        <div className={`q3j-kernel-status q3j-tone-${status.tone}`}>
          <div className="q3j-status-text">{status.text}</div>
          {status.detail ? <div className="q3j-status-detail">{status.detail}</div> : null}
        </div>
      ) : null}
    </li>
  );
}

/** Shows `message` under the row of `kernel`; with `outcomeOf`, as that action's outcome. */
type ShowRowMessage = (kernel: IKernelMetrics, message: IRowMessage, outcomeOf?: RowAction) => void;

function errorText(reason: unknown): string {
  return String((reason as Error)?.message ?? reason);
}

/** What a row says once "Free memory" ran: what was freed, the hint, or why it failed. */
async function freeOutcome(actions: IKernelActions, kernel: IKernelMetrics): Promise<IRowMessage> {
  try {
    const reply = await actions.freeMemory(kernel);
    return {
      pending: null,
      tone: 'success',
      text: reply.freed_bytes ? `Freed ${formatBytes(reply.freed_bytes)}` : 'Nothing to free',
      detail: reply.summary
    };
  } catch (reason) {
    if (reason instanceof CleanupError && reason.notLoaded) {
      return { pending: null, tone: 'hint', text: LOAD_EXTENSION_HINT };
    }
    return { pending: null, tone: 'error', text: `Free memory failed: ${errorText(reason)}` };
  }
}

function MetricsView(props: {
  model: MetricsModel;
  actions: IKernelActions;
  rows: Map<string, IRowStatus>;
  show: ShowRowMessage;
}): JSX.Element {
  const { model, actions, rows, show } = props;
  const metrics = model.metrics;
  const error = model.error;
  const thresholds = model.options.thresholds;

  if (!metrics) {
    if (error) {
      return <EmptyState state={errorState(error)} tone="error" />;
    }
    return (
      <EmptyState
        state={{
          title: 'Reading GPU memory…',
          hint: 'The first reading arrives within a second or two.'
        }}
      />
    );
  }

  const free = async (kernel: IKernelMetrics): Promise<void> => {
    const hint = freeMemoryAction(kernel).hint;
    if (hint) {
      show(kernel, { pending: null, tone: 'hint', text: hint });
      return;
    }
    show(kernel, {
      pending: 'free',
      tone: 'info',
      text: kernel.execution_state === 'busy' ? 'Waiting for the running cell…' : 'Freeing…'
    });
    show(kernel, await freeOutcome(actions, kernel), 'free');
    void model.refresh();
  };

  // Works during a cleanup's wait too: the shutdown ends that wait ("the kernel stopped"), an
  // outcome that does not replace "Shutting down…", which stays until the kernel is gone.
  const shutdown = async (kernel: IKernelMetrics): Promise<void> => {
    try {
      if (!(await actions.confirmShutdown(kernel))) {
        return;
      }
      show(kernel, { pending: 'shutdown', tone: 'info', text: 'Shutting down…' });
      await actions.shutdown(kernel);
    } catch (reason) {
      const text = `Shut down failed: ${errorText(reason)}`;
      show(kernel, { pending: null, tone: 'error', text }, 'shutdown');
    }
    void model.refresh();
  };

  const noGpu = noGpuState(metrics);
  const noKernels = noKernelsState(metrics);
  const otherTotal = physicalSum(metrics.other_processes.gpu_memory);
  const sorted = sortKernels(metrics.kernels);

  return (
    <>
      {error ? <EmptyState state={errorState(error)} tone="error" /> : null}
      <section className="q3j-section q3j-gpus">
        {noGpu ? <EmptyState state={noGpu} tone="hint" /> : null}
        {unreadGpus(metrics).map(gpu => (
          <div
            className="q3j-unread"
            key={`unread-${gpu.key}`}
            data-testid={`q3j-gpu-unread-${gpu.key}`}
          >
            <EmptyState state={unreadGpuState(gpu)} tone="error" />
          </div>
        ))}
        {metrics.gpus.map(gpu => (
          <Gauge
            key={gpu.key}
            testId={`q3j-gpu-${gpu.key}`}
            label={gpuLabel(gpu)}
            used={gpu.memory_used}
            total={gpu.memory_total}
            thresholds={thresholds}
            detail={gpu.utilization === null ? undefined : `util ${gpu.utilization}%`}
            history={metrics.history.gpu_memory_used[gpu.key]}
            timestamps={metrics.history.timestamps}
          />
        ))}
        <Gauge
          testId="q3j-host"
          label={metrics.host.source === 'cgroup' ? 'Container memory (limit)' : 'Host memory'}
          used={metrics.host.used}
          total={metrics.host.total}
          thresholds={thresholds}
          history={metrics.history.host_used}
          timestamps={metrics.history.timestamps}
        />
        {metrics.available && otherTotal !== 0 ? (
          <div
            className="q3j-other"
            title="GPU memory of processes that are not this server's kernels"
          >
            Other processes: {formatBytes(otherTotal)} VRAM
          </div>
        ) : null}
        {panelNotes(metrics).map(note => (
          <div
            className={`q3j-note q3j-note--${note.tone}`}
            key={note.text}
            role={note.tone === 'warning' ? 'status' : undefined}
          >
            {note.text}
          </div>
        ))}
      </section>
      <section className="q3j-section">
        <h3 className="q3j-heading">Notebooks</h3>
        {noKernels ? (
          <EmptyState state={noKernels} />
        ) : (
          <ul className="q3j-kernels">
            {sorted.map(kernel => (
              <KernelRow
                key={kernel.kernel_id}
                kernel={kernel}
                siblings={sorted}
                available={metrics.available}
                status={rows.get(kernel.kernel_id)}
                onFree={() => void free(kernel)}
                onShutdown={() => void shutdown(kernel)}
                onOpen={() => actions.open(kernel)}
              />
            ))}
          </ul>
        )}
      </section>
      <div className="q3j-updated">
        Updated {new Date(metrics.timestamp * 1000).toLocaleTimeString()}
      </div>
    </>
  );
}

/** The sidebar widget; tells the model when it is shown so polling follows visibility. */
export class GpuMemoryPanel extends ReactWidget {
  constructor(
    private readonly model: MetricsModel,
    private readonly actions: IKernelActions
  ) {
    super();
    this.addClass('q3j-panel');
    this.id = 'qwen3-jupyter-gpu-memory';
    this.title.caption = 'GPU memory';
    // Before the view's own listener: a reading that ends a message never renders it.
    model.changed.connect(this._pruneRows, this);
  }

  /** Opened from the status bar or the command palette: the focus follows, to the heading. */
  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    // A frame later: the command palette, as it closes after running the command, gives the
    // focus back to the main area's widget.
    requestAnimationFrame(() => {
      if (this.isVisible) {
        this.node.querySelector<HTMLElement>('.q3j-title')?.focus();
      }
    });
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.panelVisible = true;
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.panelVisible = false;
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this.model.panelVisible = this.isVisible;
  }

  protected onBeforeDetach(msg: Message): void {
    this.model.panelVisible = false;
    super.onBeforeDetach(msg);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.changed.disconnect(this._pruneRows, this);
    this._expiries.forEach(timer => clearTimeout(timer));
    this._expiries.clear();
    super.dispose();
  }

  private _show: ShowRowMessage = (kernel, message, outcomeOf) => {
    const id = kernel.kernel_id;
    if (outcomeOf && !outcomeApplies(this._rows.get(id), outcomeOf)) {
      return;
    }
    // The message is about the kernel as the latest reading shows it (see `keepRowStatus`).
    const latest = this.model.metrics?.kernels.find(k => k.kernel_id === id) ?? kernel;
    this._rows.set(id, rowStatus(latest, message));
    this._announcement = rowAnnouncement(latest, message);
    if (!message.pending) {
      this._expireLater();
    }
    this.update();
  };

  /** Clears the result just shown once its time is up, even if no reading arrives then. */
  private _expireLater(): void {
    const timer = setTimeout(() => {
      this._expiries.delete(timer);
      this._pruneRows();
    }, ROW_MESSAGE_TTL_MS + 100);
    this._expiries.add(timer);
  }

  /** Drops the messages of rows that are gone, whose kernel changed, or whose time is up. */
  private _pruneRows(): void {
    const kernels = this.model.metrics?.kernels;
    if (!kernels) {
      return;
    }
    const before = this._rows.size;
    for (const [id, status] of this._rows) {
      const kernel = kernels.find(k => k.kernel_id === id);
      if (!keepRowStatus(status, kernel)) {
        this._rows.delete(id);
      }
    }
    if (this._rows.size !== before) {
      this.update();
    }
  }

  render(): JSX.Element {
    return (
      <div className="q3j-content">
        <h2 className="q3j-title" tabIndex={-1}>
          GPU memory
        </h2>
        {/* Always there, so that screen readers hear what changes in it ("Freed 1.4 MiB"). */}
        <div className="q3j-visually-hidden" role="status" aria-live="polite">
          {this._announcement}
        </div>
        <UseSignal signal={this.model.changed}>
          {() => (
            <MetricsView
              model={this.model}
              actions={this.actions}
              rows={this._rows}
              show={this._show}
            />
          )}
        </UseSignal>
      </div>
    );
  }

  private _rows = new Map<string, IRowStatus>();
  private _announcement = '';
  private _expiries = new Set<ReturnType<typeof setTimeout>>();
}
