/**
 * Pure formatting and threshold logic for the sidebar and the status bar.
 *
 * Nothing here touches the DOM or JupyterLab, so every rule (units, levels, sort order, what an
 * empty state says) is unit-tested on its own.
 */

import type { IGpuMetrics, IKernelMetrics, IMetrics, IMetricsError, IUnreadGpu } from './metrics';

export type UsageLevel = 'ok' | 'warning' | 'critical' | 'unknown';

export interface IThresholds {
  /** Fraction of memory in use (0–1) from which a gauge turns amber. */
  warning: number;
  /** Fraction of memory in use (0–1) from which a gauge turns red. */
  critical: number;
}

/**
 * Amber from 75% in use, red from 90%: the defaults of the `warningThreshold` and
 * `criticalThreshold` settings (schema/plugin.json), and the notebook gauge's warning level.
 */
export const DEFAULT_THRESHOLDS: IThresholds = { warning: 0.75, critical: 0.9 };

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/**
 * The binary unit for `bytes` (its index in UNITS and the scale 1024^index), chosen after
 * rounding to the digits shown: 1023.96 KiB reads "1.0 MiB", never "1024.0 KiB".
 */
function unitFor(bytes: number): { unit: number; scale: number; digits: number } {
  let unit = 0;
  let scale = 1;
  const digitsOf = (u: number): number => (u === 0 ? 0 : 1);
  const rounded = (u: number, s: number): number => {
    const factor = 10 ** digitsOf(u);
    return Math.round((bytes / s) * factor) / factor;
  };
  while (rounded(unit, scale) >= 1024 && unit < UNITS.length - 1) {
    scale *= 1024;
    unit += 1;
  }
  return { unit, scale, digits: digitsOf(unit) };
}

/** Binary units with one decimal ("1.5 GiB"); `null`/`undefined` is "unknown", never "0 B". */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) {
    return 'unknown';
  }
  const sign = bytes < 0 ? '-' : '';
  const value = Math.abs(bytes);
  const { unit, scale, digits } = unitFor(value);
  return `${sign}${(value / scale).toFixed(digits)} ${UNITS[unit]}`;
}

/**
 * "used / total" with the unit of the total, so both numbers read on one scale; each in its own
 * unit when used is not zero but would read 0.0 on the total's ("40.0 GiB / 2.0 TiB").
 */
export function formatUsedOfTotal(used: number | null, total: number | null): string {
  if (total === null || total <= 0) {
    return formatBytes(used);
  }
  const { unit, scale, digits } = unitFor(total);
  const usedText = used === null ? 'unknown' : (used / scale).toFixed(digits);
  if (used !== null && used !== 0 && Number(usedText) === 0) {
    return `${formatBytes(used)} / ${formatBytes(total)}`;
  }
  return `${usedText} / ${(total / scale).toFixed(digits)} ${UNITS[unit]}`;
}

/** Fraction in use (0–1, clamped), or null when the total is unknown or zero. */
export function usageFraction(used: number | null, total: number | null): number | null {
  if (used === null || total === null || total <= 0) {
    return null;
  }
  return Math.min(1, Math.max(0, used / total));
}

export function formatPercent(fraction: number | null): string {
  return fraction === null ? '–' : `${Math.round(fraction * 100)}%`;
}

/**
 * Clamp user-configured thresholds into [0, 1] and keep warning ≤ critical, so a settings
 * typo (75 instead of 0.75, or the two swapped) degrades to something sensible.
 */
export function normalizeThresholds(warning: unknown, critical: unknown): IThresholds {
  const asFraction = (value: unknown, fallback: number): number => {
    if (typeof value !== 'number' || !Number.isFinite(value)) {
      return fallback;
    }
    const fraction = value > 1 ? value / 100 : value;
    return Math.min(1, Math.max(0, fraction));
  };
  const w = asFraction(warning, DEFAULT_THRESHOLDS.warning);
  const c = asFraction(critical, DEFAULT_THRESHOLDS.critical);
  return w <= c ? { warning: w, critical: c } : { warning: c, critical: w };
}

export function usageLevel(
  fraction: number | null,
  thresholds: IThresholds = DEFAULT_THRESHOLDS
): UsageLevel {
  if (fraction === null) {
    return 'unknown';
  }
  if (fraction >= thresholds.critical) {
    return 'critical';
  }
  if (fraction >= thresholds.warning) {
    return 'warning';
  }
  return 'ok';
}

/**
 * The level in words, beside its colour ("" when memory is fine or its total unknown): colour
 * alone says nothing to a screen reader, nor to many colour-blind users.
 */
export function levelWord(level: UsageLevel): string {
  return level === 'critical' ? 'critical' : level === 'warning' ? 'high' : '';
}

/** The ARIA attributes of a gauge's role=meter. */
export interface IMeterAria {
  'aria-valuemin': number;
  'aria-valuemax': number;
  'aria-valuenow': number;
  'aria-valuetext': string;
}

/**
 * A gauge's meter in percent (screen readers announce aria-valuenow against min and max, and
 * raw bytes read as "66571993088"), and as text: the figures on show and the level, e.g.
 * "62.0 of 80.0 GiB, 78%, high".
 */
export function meterAria(
  used: number | null,
  total: number | null,
  thresholds: IThresholds = DEFAULT_THRESHOLDS
): IMeterAria {
  const fraction = usageFraction(used, total);
  const parts = [formatUsedOfTotal(used, total).replace(' / ', ' of ')];
  if (fraction === null) {
    parts.push('total unknown');
  } else {
    parts.push(formatPercent(fraction));
  }
  const word = levelWord(usageLevel(fraction, thresholds));
  if (word) {
    parts.push(word);
  }
  return {
    'aria-valuemin': 0,
    'aria-valuemax': 100,
    'aria-valuenow': Math.round((fraction ?? 0) * 100),
    'aria-valuetext': parts.join(', ')
  };
}

/**
 * GPUs whose memory is not already counted by another entry: every GPU without a MIG parent,
 * and the MIG instances whose parent is not listed (in a container that sees only its MIG
 * slice, the parent GPU cannot be read; the slice is all there is).
 */
export function physicalGpus(gpus: IGpuMetrics[]): IGpuMetrics[] {
  const parents = new Set(gpus.filter(gpu => gpu.mig_parent === null).map(gpu => gpu.index));
  return gpus.filter(gpu => gpu.mig_parent === null || !parents.has(gpu.mig_parent));
}

export function gpuLabel(gpu: IGpuMetrics): string {
  const prefix =
    gpu.mig_parent === null ? `GPU ${gpu.index}` : `GPU ${gpu.mig_parent} · MIG ${gpu.index}`;
  return `${prefix} · ${gpu.name}`;
}

/**
 * Sum of a per-GPU map ("0", "0/1", …) over physical GPUs, as the server's `_physical_total`
 * does: a MIG parent's figure already contains its instances', so each physical GPU counts
 * max(its own figure, the sum of its instances'). Unknown (null) figures count as zero.
 */
export function physicalSum(figures: Record<string, number | null>): number | null {
  const perGpu = new Map<string, { own: number | null; instances: (number | null)[] }>();
  for (const [key, value] of Object.entries(figures)) {
    const slash = key.indexOf('/');
    const parent = slash === -1 ? key : key.slice(0, slash);
    const entry = perGpu.get(parent) ?? { own: null, instances: [] };
    if (slash === -1) {
      entry.own = value;
    } else {
      entry.instances.push(value);
    }
    perGpu.set(parent, entry);
  }
  // As the server's _physical_total: an unknown figure makes the sum unknown, never partial.
  let total = 0;
  for (const { own, instances } of perGpu.values()) {
    let value = own;
    if (instances.length > 0) {
      const known = instances.filter((v): v is number => v !== null);
      if (own === null && known.length < instances.length) {
        return null;
      }
      value = Math.max(
        own ?? 0,
        known.reduce((sum, v) => sum + v, 0)
      );
    }
    if (value === null) {
      return null;
    }
    total += value;
  }
  return total;
}

/** Total VRAM used and available across physical GPUs, or null when there is none. */
export function totalVram(metrics: IMetrics): { used: number; total: number } | null {
  const gpus = physicalGpus(metrics.gpus);
  if (!metrics.available || gpus.length === 0) {
    return null;
  }
  return gpus.reduce(
    (sum, gpu) => ({
      used: sum.used + gpu.memory_used,
      total: sum.total + gpu.memory_total
    }),
    { used: 0, total: 0 }
  );
}

/** Largest VRAM first; unknown VRAM after every known figure; then RSS, then label. */
export function sortKernels(kernels: IKernelMetrics[]): IKernelMetrics[] {
  const key = (value: number | null): number => (value === null ? -1 : value);
  return [...kernels].sort(
    (a, b) =>
      key(b.gpu_memory_total) - key(a.gpu_memory_total) ||
      key(b.rss) - key(a.rss) ||
      kernelLabel(a).localeCompare(kernelLabel(b))
  );
}

/**
 * The notebook's file name, the console's name ("Console 1") for a kernel only a console
 * uses, or a short kernel id for a kernel with no session.
 */
export function kernelLabel(kernel: IKernelMetrics): string {
  if (kernel.notebook_path) {
    const parts = kernel.notebook_path.split('/');
    return parts[parts.length - 1] || kernel.notebook_path;
  }
  if (kernel.console_name) {
    return kernel.console_name;
  }
  return `Kernel ${kernel.kernel_id.slice(0, 8)}`;
}

/** About how many characters of a name's end a row keeps whole (extension and last words). */
const END_LENGTH = 16;
/** The shorter end kept beside a difference in the middle of a name, which needs the room. */
const SHORT_END = 10;
/** How far from those lengths an end may start, to start at a word. */
const END_SLACK = 4;
/** A run of letters longer than this with no word start in it is cut where the names differ. */
const MAX_WORD = 12;
const SEPARATOR = /[_\-. ]/;
const UPPER = /\p{Lu}/u;
const LOWER = /\p{Ll}/u;
const LETTER = /\p{L}/u;
const DIGIT = /\p{Nd}/u;

function commonPrefix(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) {
    i += 1;
  }
  return i;
}

/**
 * Whether a word of `name` starts at `i`: after a separator ("run_07"), at a case change
 * ("Sweep" in "ExperimentSweep", "Usage" in "GPUUsage") or where letters and digits meet
 * ("01" in "Sweep01").
 */
export function isWordStart(name: string, i: number): boolean {
  if (i <= 0) {
    return true;
  }
  if (i >= name.length) {
    return false;
  }
  const [before, at, after] = [name[i - 1], name[i], name[i + 1] ?? ''];
  return (
    SEPARATOR.test(before) ||
    (LOWER.test(before) && UPPER.test(at)) ||
    (UPPER.test(before) && UPPER.test(at) && LOWER.test(after)) ||
    (LETTER.test(before) && DIGIT.test(at)) ||
    (DIGIT.test(before) && LETTER.test(at))
  );
}

/** The word start of `name` in [from, to] nearest to `target` (of two, the later), or null. */
function nearestWordStart(name: string, target: number, from: number, to: number): number | null {
  let best: number | null = null;
  for (let i = Math.min(to, name.length - 1); i >= Math.max(1, from); i -= 1) {
    if (isWordStart(name, i) && (best === null || Math.abs(i - target) < Math.abs(best - target))) {
      best = i;
    }
  }
  return best;
}

/** Where `name` first differs from the other names in `siblings`, at the start of that word. */
function differingWord(
  name: string,
  kernel: IKernelMetrics,
  siblings: readonly IKernelMetrics[]
): number {
  let shared = 0;
  for (const other of siblings) {
    const otherName = kernelLabel(other);
    if (other.kernel_id !== kernel.kernel_id && otherName !== name) {
      shared = Math.max(shared, commonPrefix(name, otherName));
    }
  }
  shared = Math.min(shared, name.length - 1);
  // The start of the word holding `from`, or null when none starts within MAX_WORD before it.
  const wordStart = (from: number): number | null => {
    for (let i = from; i >= 0 && from - i <= MAX_WORD; i -= 1) {
      if (isWordStart(name, i)) {
        return i;
      }
    }
    return null;
  };
  // The word that differs, with the word before a number ("run_07", "Sweep01", not "07").
  let differs = wordStart(shared) ?? shared;
  if (differs > 1 && DIGIT.test(name[differs])) {
    differs = wordStart(differs - 1) ?? differs;
  }
  return differs;
}

export interface INameParts {
  /** The start of the name: the panel cuts it at its end first, down to 2em. */
  head: string;
  /** The part that tells this notebook from the others when it lies in the middle of the
   * name, else "": cut at its end once the head is down to 2em. */
  tail: string;
  /** The end of the name (extension and last words): the panel never cuts it, unless it is
   * wider than the line less 2em. */
  end: string;
  /** The notebook's folder ("" at the root), for a secondary line that the panel cuts at its
   * start, so that its last folders show. */
  folder: string;
}

/**
 * A row's name in parts for a middle ellipsis that keeps what tells notebooks apart: the end
 * (its last 16 or so characters, from a word start: extension and last words) always, whatever
 * other kernels run, and the word where the name first differs from those of `siblings` (see
 * `isWordStart`). A difference near the end starts the end (or a word start a little before
 * it does); one further in is the `tail`, before a shorter end (about 10 characters); one at
 * the very start is the head's start, which shows as the head is cut at its end.
 */
export function kernelNameParts(
  kernel: IKernelMetrics,
  siblings: readonly IKernelMetrics[]
): INameParts {
  const name = kernelLabel(kernel);
  const path = kernel.notebook_path ?? '';
  const slash = path.lastIndexOf('/');
  const folder = kernel.notebook_path && slash > 0 ? path.slice(0, slash) : '';
  const split = (head: number, end: number): INameParts => ({
    head: name.slice(0, head),
    tail: name.slice(head, end),
    end: name.slice(end),
    folder
  });
  if (name.length <= END_LENGTH) {
    return split(0, 0);
  }
  const differs = differingWord(name, kernel, siblings);
  const endAt = name.length - END_LENGTH;
  if (differs > endAt) {
    // The differing word, or a word start nearer to the end's usual length before it.
    const near = nearestWordStart(name, endAt, endAt - MAX_WORD, differs - 1);
    const start =
      near !== null && Math.abs(near - endAt) < Math.abs(differs - endAt) ? near : differs;
    return split(start, start);
  }
  const shortAt = name.length - SHORT_END;
  const from = Math.max(differs + 1, shortAt - END_SLACK);
  const short = nearestWordStart(name, shortAt, from, shortAt + END_SLACK);
  if (differs > 0) {
    return split(differs, short ?? Math.max(differs + 1, shortAt));
  }
  const start = nearestWordStart(name, endAt, endAt - END_SLACK, endAt + END_SLACK) ?? endAt;
  return split(start, start);
}

/** "0" → "GPU 0", "0/1" → "GPU 0 / MIG 1": the label of a per-GPU map's key. */
export function gpuKeyLabel(key: string): string {
  const slash = key.indexOf('/');
  return slash === -1 ? `GPU ${key}` : `GPU ${key.slice(0, slash)} / MIG ${key.slice(slash + 1)}`;
}

/** The VRAM figure's tooltip: what it counts and, per GPU it uses, how much (largest first). */
export function kernelVramTooltip(kernel: IKernelMetrics): string {
  const what = 'GPU memory of the kernel and its child processes';
  const used = Object.entries(kernel.gpu_memory)
    .filter(([, bytes]) => bytes === null || bytes > 0)
    .sort(([, a], [, b]) => (b ?? -1) - (a ?? -1));
  // A MIG parent's figure already holds its instances': show the instances alone.
  const parents = new Set(
    used.filter(([key]) => key.includes('/')).map(([key]) => key.split('/')[0])
  );
  const shown = used.filter(([key]) => key.includes('/') || !parents.has(key));
  if (shown.length === 0) {
    return what;
  }
  return `${what}\n${shown.map(([key, bytes]) => `${gpuKeyLabel(key)}: ${formatBytes(bytes)}`).join(' · ')}`;
}

/** VRAM of one kernel as the row shows it, e.g. "1.2 GiB" or "unknown". */
export function kernelVramText(kernel: IKernelMetrics, available: boolean): string {
  if (!available) {
    return 'no GPU';
  }
  return formatBytes(kernel.gpu_memory_total);
}

/**
 * SVG polyline points for a sparkline of `values` scaled to `max` (the GPU's total), oldest
 * left: one points string per unbroken run. A `null` value is a sample in which the GPU could
 * not be read: the line breaks there (it does not drop to 0, which would read as memory freed),
 * and the gap keeps its width. A reading alone between gaps is a zero-length run ("x,y x,y"),
 * which a round line cap draws as a dot. Fewer than two values draw nothing.
 */
export function sparklinePoints(
  values: readonly (number | null)[],
  max: number,
  width: number,
  height: number,
  inset = 0
): string[] {
  if (values.length < 2 || max <= 0) {
    return [];
  }
  const step = width / (values.length - 1);
  const runs: string[][] = [];
  let run: string[] | null = null;
  values.forEach((value, i) => {
    if (value === null || !Number.isFinite(value)) {
      run = null;
      return;
    }
    // `inset` keeps 0 and the total inside the box, where a stroke that wide is not clipped.
    const span = height - 2 * inset;
    const y = height - inset - (Math.min(Math.max(value, 0), max) / max) * span;
    if (run === null) {
      run = [];
      runs.push(run);
    }
    run.push(`${(i * step).toFixed(1)},${y.toFixed(1)}`);
  });
  return runs.map(points => (points.length === 1 ? [points[0], points[0]] : points).join(' '));
}

/** What span of time a sparkline over `timestamps` (seconds) covers: "Last 2 min". */
export function sparklineTitle(timestamps: readonly number[]): string {
  if (timestamps.length < 2) {
    return '';
  }
  const span = Math.max(0, timestamps[timestamps.length - 1] - timestamps[0]);
  return span < 60 ? `Last ${Math.round(span)} s` : `Last ${Math.round(span / 60)} min`;
}

/**
 * What a sparkline shows, for screen readers and its tooltip: "Last 2 min: rising, from
 * 58.0 GiB to 62.0 GiB"; "steady at 1.5 GiB" when it moved by less than 1% of `max`. Empty when it has
 * fewer than two readings (it draws nothing then).
 */
export function sparklineSummary(
  values: readonly (number | null)[],
  max: number,
  timestamps: readonly number[]
): string {
  const known = values.filter((v): v is number => v !== null && Number.isFinite(v));
  if (known.length < 2) {
    return '';
  }
  const first = known[0];
  const last = known[known.length - 1];
  const change = max > 0 ? (last - first) / max : 0;
  const span = sparklineTitle(timestamps);
  const direction = change > 0 ? 'rising' : 'falling';
  const trend =
    Math.abs(change) < 0.01
      ? `steady at ${formatBytes(last)}`
      : `${direction}, from ${formatBytes(first)} to ${formatBytes(last)}`;
  return span ? `${span}: ${trend}` : trend;
}

export interface IEmptyState {
  title: string;
  hint: string;
}

/** What an error means for the user and what they can do about it. */
export function errorState(error: IMetricsError): IEmptyState {
  switch (error.kind) {
    case 'extension-missing':
      return {
        title: 'The qwen3-jupyter server extension is not running on this server.',
        hint:
          'Run "jupyter server extension enable qwen3_jupyter" in the environment that ' +
          'runs Jupyter, then restart the server.'
      };
    case 'forbidden':
      if (error.fromServer) {
        // Signed in, but this user may not read kernel information (the endpoint's resource).
        return {
          title: error.message,
          hint:
            'You are signed in, but your account lacks the permission this panel needs ' +
            '(reading kernels); ask the administrator of this Jupyter server for it.'
        };
      }
      return {
        title: 'The server refused the request (not signed in).',
        hint: 'Reload the page or open the URL with its token to sign in again.'
      };
    case 'unreachable':
      return {
        title: 'The Jupyter server is not reachable.',
        hint: 'Check that the Jupyter server is still running; the panel keeps retrying on its own.'
      };
    default:
      if (error.fromServer) {
        return {
          title: error.message,
          hint:
            error.status === 503
              ? 'The panel keeps retrying on its own.'
              : `The metrics endpoint answered HTTP ${error.status ?? '?'}; the panel keeps retrying.`
        };
      }
      return {
        title: `The metrics endpoint failed: ${error.message}`,
        hint: 'See the Jupyter server log for the cause; the panel keeps retrying.'
      };
  }
}

/** The GPUs that could not be read in this sample ([] from older servers). */
export function unreadGpus(metrics: IMetrics): IUnreadGpu[] {
  return metrics.available ? (metrics.unread_gpus ?? []) : [];
}

/** The row of a GPU that could not be read: what happened and what brings it back. */
export function unreadGpuState(gpu: IUnreadGpu): IEmptyState {
  return {
    title: `GPU ${gpu.index} — could not be read (${gpu.error ?? 'no answer from NVML'})`,
    hint: gpu.lost
      ? 'The driver lost this GPU: whatever was on it (models, tensors) is gone. A GPU reset ' +
        '(nvidia-smi -r, with nothing running on it) or a reboot brings it back; then restart ' +
        'the notebooks that used it.'
      : 'NVML did not answer for this GPU; the panel keeps retrying. If it stays so, check ' +
        'nvidia-smi and the kernel log (dmesg).'
  };
}

/** Why there is no GPU gauge, when there is none (and no unread GPU row says it instead). */
export function noGpuState(metrics: IMetrics): IEmptyState | null {
  if (metrics.available && (metrics.gpus.length > 0 || unreadGpus(metrics).length > 0)) {
    return null;
  }
  const why = (metrics.reason ?? '').replace(/;\s*showing .*$/i, '').trim();
  return {
    title: 'No GPU to show',
    hint:
      `${why || 'NVML found no NVIDIA GPU'}. Showing host memory and each notebook's RSS ` +
      'instead; on a GPU machine, check the NVIDIA driver (nvidia-smi).'
  };
}

export interface IPanelNote {
  text: string;
  tone: 'info' | 'warning';
}

/**
 * The notes the panel shows under the gauges, most urgent first: a stale reading, the reading's
 * `reason` when GPUs are still listed (with none, `noGpuState` already says it), then the
 * server's own notes.
 */
export function panelNotes(metrics: IMetrics): IPanelNote[] {
  const notes: IPanelNote[] = [];
  const add = (text: string, tone: IPanelNote['tone']): void => {
    if (text && !notes.some(note => note.text === text)) {
      notes.push({ text, tone });
    }
  };
  const stale = staleNote(metrics);
  if (stale) {
    add(stale, 'warning');
  }
  if (noGpuState(metrics) === null) {
    // A reason about the unread GPUs only is what their rows say already.
    const reason = (metrics.reason ?? '').trim();
    const unread = new Set(unreadGpus(metrics).map(gpu => gpu.index));
    const named = [...reason.matchAll(/GPU (\d+)/g)].map(match => Number(match[1]));
    const covered = unread.size > 0 && named.every(index => unread.has(index));
    if (!covered) {
      add(reason, 'warning');
    }
  }
  for (const note of metrics.notes) {
    add(note, 'info');
  }
  return notes;
}

export function noKernelsState(metrics: IMetrics): IEmptyState | null {
  if (metrics.kernels.length > 0) {
    return null;
  }
  return {
    title: 'No running kernels on this server.',
    hint: 'Open a notebook and run a cell; its memory appears here.'
  };
}

export interface IStatusBarState {
  text: string;
  level: UsageLevel;
  title: string;
}

const WORSE: UsageLevel[] = ['unknown', 'ok', 'warning', 'critical'];

/** Why a reading is old (the server serves its last sample while NVML hangs), or null. */
function staleNote(metrics: IMetrics): string | null {
  if (!metrics.stale) {
    return null;
  }
  const age = metrics.sample_age_s;
  return typeof age === 'number' && Number.isFinite(age)
    ? `Reading is ${Math.round(age)} s old: the GPU driver is not answering.`
    : 'Reading is out of date: the GPU driver is not answering.';
}

/**
 * The status bar's item: the fullest GPU ("GPU 2 70.0 / 80.0 GiB"; no index with a single GPU)
 * coloured by the worst level, "GPU 0 lost" in red when a GPU could not be read, host RAM when
 * there is no GPU. The tooltip lists every GPU. A reading that is not current (the server
 * stopped answering, or serves an old sample) stays on show, marked "(old)" and at least amber;
 * "GPU: ?" only when there was never a reading.
 */
export function statusBarState(
  metrics: IMetrics | null,
  error: IMetricsError | null,
  thresholds: IThresholds = DEFAULT_THRESHOLDS
): IStatusBarState {
  if (!metrics) {
    return error
      ? { text: 'GPU: ?', level: 'unknown', title: `GPU memory: ${error.message}` }
      : { text: 'GPU: …', level: 'unknown', title: 'GPU memory — click for details.' };
  }
  const lines = ['GPU memory — click for details.'];
  let text = '';
  let level: UsageLevel = 'unknown';
  const gpus = metrics.available ? metrics.gpus : [];
  let fullest: { gpu: IGpuMetrics; fraction: number } | null = null;
  for (const gpu of gpus) {
    const fraction = usageFraction(gpu.memory_used, gpu.memory_total);
    lines.push(
      `${gpuKeyLabel(gpu.key)}: ${formatUsedOfTotal(gpu.memory_used, gpu.memory_total)} ` +
        `(${formatPercent(fraction)})`
    );
    if (fraction !== null && (fullest === null || fraction > fullest.fraction)) {
      fullest = { gpu, fraction };
    }
  }
  if (fullest) {
    const { gpu } = fullest;
    const label = gpus.length > 1 ? gpuKeyLabel(gpu.key) : 'GPU';
    text = `${label} ${formatUsedOfTotal(gpu.memory_used, gpu.memory_total)}`;
    level = usageLevel(fullest.fraction, thresholds);
  }
  const unread = unreadGpus(metrics);
  for (const gpu of unread) {
    lines.push(`GPU ${gpu.index}: could not be read (${gpu.error ?? 'no answer from NVML'})`);
  }
  if (unread.length > 0) {
    const lost = unread.filter(gpu => gpu.lost);
    const shown = lost.length > 0 ? lost : unread;
    const word = lost.length > 0 ? 'lost' : 'unreadable';
    text = shown.length === 1 ? `GPU ${shown[0].index} ${word}` : `${shown.length} GPUs ${word}`;
    const unreadLevel: UsageLevel = lost.length > 0 ? 'critical' : 'warning';
    level = WORSE.indexOf(unreadLevel) > WORSE.indexOf(level) ? unreadLevel : level;
  }
  if (!text) {
    text = `RAM ${formatUsedOfTotal(metrics.host.used, metrics.host.total)}`;
    level = usageLevel(usageFraction(metrics.host.used, metrics.host.total), thresholds);
  }
  const top = metrics.kernels.reduce<{ label: string; bytes: number } | null>((best, k) => {
    const bytes = k.gpu_memory_total ?? -1;
    return bytes > (best?.bytes ?? 0) ? { label: k.notebook_path ?? kernelLabel(k), bytes } : best;
  }, null);
  if (top) {
    lines.push(`Largest notebook: ${top.label} (${formatBytes(top.bytes)})`);
  }
  const old = outOfDate(metrics, error);
  if (old) {
    // The sidebar said so; the status bar showed the old figure as current, in its old colour.
    text += old.marker;
    level = WORSE.indexOf('warning') > WORSE.indexOf(level) ? 'warning' : level;
    lines.splice(1, 0, old.note);
  }
  return { text, level, title: lines.join('\n') };
}

/**
 * Why the reading on show is not current, or null when it is: the last poll failed (the server
 * went away: the last reading stays, as in the sidebar), or the server's sample is old.
 */
function outOfDate(
  metrics: IMetrics,
  error: IMetricsError | null
): { marker: string; note: string } | null {
  if (error) {
    return { marker: ' (old)', note: `${errorState(error).title} Showing the last reading.` };
  }
  const stale = staleNote(metrics);
  if (!stale) {
    return null;
  }
  const age = metrics.sample_age_s;
  const marker =
    typeof age === 'number' && Number.isFinite(age) ? ` (${Math.round(age)} s old)` : ' (old)';
  return { marker, note: stale };
}

/**
 * The status-bar item's accessible name: what it is and does (the title), the figure it shows,
 * and the level in words, which the item shows only as a coloured mark.
 */
export function statusBarLabel(state: IStatusBarState): string {
  const word = levelWord(state.level);
  return `${state.title} ${state.text}${word ? ` (${word})` : ''}`;
}

/** The status bar's one-liner (see `statusBarState`). */
export function statusBarText(metrics: IMetrics | null, error: IMetricsError | null): string {
  return statusBarState(metrics, error).text;
}

export const LOAD_EXTENSION_HINT =
  'This kernel has not loaded qwen3-jupyter, so it cannot free its memory on request. ' +
  'Run "%load_ext qwen3_jupyter" in the notebook, then press "Free memory" again.';

export const DEAD_KERNEL_HINT =
  'This kernel is dead: nothing can run in it, so nothing can be freed. Restart it ' +
  '(Kernel ▸ Restart Kernel) or shut it down: either gives its memory back.';

/** What the "Free memory" button of a kernel's row says and does instead of a cleanup (`hint`,
 * null: run the cleanup). A dead kernel (killed, not yet replaced by the restarter) reports no
 * extension, and "load the extension" would be wrong advice for it. */
export function freeMemoryAction(kernel: IKernelMetrics): { title: string; hint: string | null } {
  if (kernel.execution_state === 'dead') {
    return { title: DEAD_KERNEL_HINT, hint: DEAD_KERNEL_HINT };
  }
  if (!kernel.extension_loaded) {
    return { title: 'Shows how to load qwen3_jupyter in this kernel', hint: LOAD_EXTENSION_HINT };
  }
  return { title: 'Run qwen3_jupyter.cleanup() in this kernel', hint: null };
}
