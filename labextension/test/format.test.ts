import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import {
  DEAD_KERNEL_HINT,
  DEFAULT_THRESHOLDS,
  errorState,
  formatBytes,
  formatPercent,
  formatUsedOfTotal,
  freeMemoryAction,
  gpuLabel,
  kernelLabel,
  kernelNameParts,
  kernelVramText,
  kernelVramTooltip,
  LOAD_EXTENSION_HINT,
  noGpuState,
  noKernelsState,
  normalizeThresholds,
  panelNotes,
  physicalGpus,
  physicalSum,
  sortKernels,
  sparklinePoints,
  sparklineTitle,
  statusBarState,
  statusBarText,
  totalVram,
  unreadGpuState,
  usageFraction,
  usageLevel
} from '../src/format';
import type { IGpuMetrics, IKernelMetrics, IMetrics } from '../src/metrics';

const GiB = 1024 ** 3;

function gpu(
  index: number,
  used: number,
  total: number,
  migParent: number | null = null
): IGpuMetrics {
  return {
    key: migParent === null ? String(index) : `${migParent}/${index}`,
    index,
    uuid: `GPU-${index}`,
    name: 'NVIDIA H100',
    memory_used: used,
    memory_total: total,
    utilization: 10,
    mig_parent: migParent,
    memory_source: 'v2'
  };
}

function kernel(
  id: string,
  vram: number | null,
  rss: number | null,
  path: string | null
): IKernelMetrics {
  return {
    kernel_id: id,
    name: 'python3',
    notebook_path: path,
    pid: 1,
    rss,
    gpu_memory: { '0': vram },
    gpu_memory_total: vram,
    extension_loaded: false,
    execution_state: 'idle'
  };
}

function metrics(partial: Partial<IMetrics> = {}): IMetrics {
  return {
    available: true,
    reason: null,
    timestamp: 0,
    driver_version: '550.54',
    gpus: [gpu(0, 2 * GiB, 80 * GiB)],
    host: { total: 16 * GiB, available: 12 * GiB, used: 4 * GiB, source: 'host' },
    kernels: [],
    other_processes: { gpu_memory: {} },
    history: { timestamps: [], gpu_memory_used: {}, host_used: [] },
    notes: [],
    sample_interval: 1,
    ...partial
  };
}

describe('formatBytes', () => {
  it('uses binary units with one decimal', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * GiB)).toBe('3.0 GiB');
    expect(formatBytes(2048 * GiB)).toBe('2.0 TiB');
    expect(formatBytes(-512 * 1024 * 1024)).toBe('-512.0 MiB');
  });

  it('picks the unit after rounding: 1023.96 KiB is 1.0 MiB, not 1024.0 KiB', () => {
    expect(formatBytes(1023.96 * 1024)).toBe('1.0 MiB');
    expect(formatBytes(1024 ** 2 - 1)).toBe('1.0 MiB');
    expect(formatBytes(1023.94 * 1024)).toBe('1023.9 KiB');
    expect(formatBytes(1023.6)).toBe('1.0 KiB');
    expect(formatBytes(GiB - 1)).toBe('1.0 GiB');
    expect(formatBytes(-(1024 ** 2 - 1))).toBe('-1.0 MiB');
    expect(formatBytes(1024 ** 5 - 1)).toBe('1024.0 TiB'); // no unit above TiB
  });

  it('says unknown, never 0, when the size is unknown', () => {
    expect(formatBytes(null)).toBe('unknown');
    expect(formatBytes(undefined)).toBe('unknown');
    expect(formatBytes(Number.NaN)).toBe('unknown');
  });
});

describe('formatUsedOfTotal', () => {
  it('puts both numbers on the unit of the total', () => {
    expect(formatUsedOfTotal(512 * 1024 * 1024, 80 * GiB)).toBe('0.5 / 80.0 GiB');
    expect(formatUsedOfTotal(null, 8 * GiB)).toBe('unknown / 8.0 GiB');
    expect(formatUsedOfTotal(100, 0)).toBe('100 B');
  });

  it('picks the unit after rounding the total', () => {
    expect(formatUsedOfTotal(512 * 1024 ** 2, 1023.96 * 1024 ** 2)).toBe('0.5 / 1.0 GiB');
    expect(formatUsedOfTotal(512, 1023.7)).toBe('0.5 / 1.0 KiB');
    expect(formatUsedOfTotal(1023.94 * 1024 ** 2, 1023.94 * 1024 ** 2)).toBe('1023.9 / 1023.9 MiB');
  });

  it('never reads a non-zero used amount as 0.0: each in its own unit then', () => {
    expect(formatUsedOfTotal(40 * GiB, 2048 * GiB)).toBe('40.0 GiB / 2.0 TiB');
    expect(formatUsedOfTotal(10 * 1024 ** 2, 80 * GiB)).toBe('10.0 MiB / 80.0 GiB');
    expect(formatUsedOfTotal(0, 2048 * GiB)).toBe('0.0 / 2.0 TiB');
    expect(formatUsedOfTotal(103 * GiB, 2048 * GiB)).toBe('0.1 / 2.0 TiB');
  });
});

describe('thresholds', () => {
  it('classifies fractions at the boundaries', () => {
    expect(usageLevel(0.5)).toBe('ok');
    expect(usageLevel(0.75)).toBe('warning');
    expect(usageLevel(0.899)).toBe('warning');
    expect(usageLevel(0.9)).toBe('critical');
    expect(usageLevel(null)).toBe('unknown');
    expect(usageLevel(0.6, { warning: 0.5, critical: 0.8 })).toBe('warning');
  });

  it('clamps fractions and refuses a zero total', () => {
    expect(usageFraction(5, 10)).toBe(0.5);
    expect(usageFraction(20, 10)).toBe(1);
    expect(usageFraction(5, 0)).toBeNull();
    expect(usageFraction(null, 10)).toBeNull();
    expect(formatPercent(0.456)).toBe('46%');
    expect(formatPercent(null)).toBe('–');
  });

  it('defaults to amber at 75% and red at 90%, as the settings schema says', () => {
    const schema = JSON.parse(
      readFileSync(new URL('../schema/plugin.json', import.meta.url), 'utf8')
    );
    expect(DEFAULT_THRESHOLDS).toEqual({ warning: 0.75, critical: 0.9 });
    expect(schema.properties.warningThreshold.default).toBe(DEFAULT_THRESHOLDS.warning);
    expect(schema.properties.criticalThreshold.default).toBe(DEFAULT_THRESHOLDS.critical);
    expect(schema.properties.warningThreshold.description).toContain('0.75');
    expect(usageLevel(0.72)).toBe('ok');
    expect(usageLevel(0.75)).toBe('warning');
  });

  it('normalizes user settings: percent, swapped, invalid', () => {
    expect(normalizeThresholds(0.6, 0.8)).toEqual({ warning: 0.6, critical: 0.8 });
    expect(normalizeThresholds(60, 85)).toEqual({ warning: 0.6, critical: 0.85 });
    expect(normalizeThresholds(0.95, 0.5)).toEqual({ warning: 0.5, critical: 0.95 });
    expect(normalizeThresholds('x', undefined)).toEqual(DEFAULT_THRESHOLDS);
    expect(normalizeThresholds(-1, 2)).toEqual({ warning: 0, critical: 0.02 });
  });
});

describe('GPUs', () => {
  it('does not double count MIG instances', () => {
    const gpus = [
      gpu(0, 10 * GiB, 80 * GiB),
      gpu(1, 4 * GiB, 20 * GiB, 0),
      gpu(2, 1 * GiB, 40 * GiB)
    ];
    expect(physicalGpus(gpus).map(g => g.index)).toEqual([0, 2]);
    expect(totalVram(metrics({ gpus }))).toEqual({ used: 11 * GiB, total: 120 * GiB });
    expect(gpuLabel(gpus[1])).toBe('GPU 0 · MIG 1 · NVIDIA H100');
  });

  it('labels MIG instances with their parent GPU', () => {
    expect(gpuLabel(gpu(0, 0, 40 * GiB, 0))).toBe('GPU 0 · MIG 0 · NVIDIA H100');
    expect(gpuLabel(gpu(0, 0, 40 * GiB, 1))).toBe('GPU 1 · MIG 0 · NVIDIA H100');
    expect(gpuLabel(gpu(3, 0, 80 * GiB))).toBe('GPU 3 · NVIDIA H100');
  });

  it('counts a MIG slice whose parent GPU cannot be read', () => {
    // A container that sees only its slice: no entry with mig_parent null for GPU 0.
    const slice = [gpu(0, 30 * GiB, 40 * GiB, 0)];
    expect(physicalGpus(slice).map(g => g.key)).toEqual(['0/0']);
    const m = metrics({ gpus: slice, reason: 'NVML error: GPU 0: Insufficient Permissions' });
    expect(totalVram(m)).toEqual({ used: 30 * GiB, total: 40 * GiB });
    expect(statusBarText(m, null)).toBe('GPU 30.0 / 40.0 GiB');
    // Two slices of an unreadable GPU 0 beside a plain GPU 1.
    const mixed = [
      gpu(0, 1 * GiB, 40 * GiB, 0),
      gpu(1, 2 * GiB, 40 * GiB, 0),
      gpu(1, 3 * GiB, 80 * GiB)
    ];
    expect(totalVram(metrics({ gpus: mixed }))).toEqual({ used: 6 * GiB, total: 160 * GiB });
  });

  it('sums per-GPU figures per physical GPU, counting MIG memory once', () => {
    expect(physicalSum({ '0': 20 * GiB, '0/0': 12 * GiB, '0/1': 8 * GiB })).toBe(20 * GiB);
    // The parent's own figure can be missing or smaller than its instances'.
    expect(physicalSum({ '0/0': 12 * GiB, '0/1': 8 * GiB })).toBe(20 * GiB);
    expect(physicalSum({ '0': 5 * GiB, '0/0': 12 * GiB })).toBe(12 * GiB);
    expect(physicalSum({ '0': 1 * GiB, '1': 2 * GiB, '1/0': 2 * GiB })).toBe(3 * GiB);
    // An unknown figure makes the sum unknown, as on the server: never a partial sum.
    expect(physicalSum({ '0': 1 * GiB, '2': null })).toBeNull();
    expect(physicalSum({ '0/0': 1 * GiB, '0/1': null })).toBeNull();
    expect(physicalSum({})).toBe(0);
  });

  it('has no VRAM total without NVML', () => {
    expect(totalVram(metrics({ available: false, gpus: [] }))).toBeNull();
  });
});

describe('kernels', () => {
  it('sorts by VRAM, unknown after known, then RSS, then name', () => {
    const sorted = sortKernels([
      kernel('a', 1 * GiB, 1, 'a.ipynb'),
      kernel('b', null, 9 * GiB, 'b.ipynb'),
      kernel('c', 5 * GiB, 1, 'c.ipynb'),
      kernel('d', 0, 3 * GiB, 'd.ipynb'),
      kernel('e', 0, 3 * GiB, 'dir/aa.ipynb')
    ]);
    expect(sorted.map(k => k.kernel_id)).toEqual(['c', 'a', 'e', 'd', 'b']);
  });

  it('labels by notebook file name or kernel id', () => {
    expect(kernelLabel(kernel('x', 0, 0, 'work/train.ipynb'))).toBe('train.ipynb');
    expect(kernelLabel(kernel('0123456789abcdef', 0, 0, null))).toBe('Kernel 01234567');
  });

  it('shows unknown VRAM as unknown and no GPU as such', () => {
    expect(kernelVramText(kernel('x', null, 0, null), true)).toBe('unknown');
    expect(kernelVramText(kernel('x', 2 * GiB, 0, null), true)).toBe('2.0 GiB');
    expect(kernelVramText(kernel('x', null, 0, null), false)).toBe('no GPU');
  });
});

describe('sparkline', () => {
  it('scales to the total, oldest left', () => {
    expect(sparklinePoints([0, 50, 100], 100, 100, 10)).toEqual(['0.0,10.0 50.0,5.0 100.0,0.0']);
    expect(sparklinePoints([200, -5], 100, 10, 10)).toEqual(['0.0,0.0 10.0,10.0']);
  });

  it('draws nothing without two points or a total', () => {
    expect(sparklinePoints([1], 100, 10, 10)).toEqual([]);
    expect(sparklinePoints([1, 2], 0, 10, 10)).toEqual([]);
    expect(sparklinePoints([null, null, null], 100, 10, 10)).toEqual([]);
  });

  it('breaks the line where a GPU was not read instead of drawing 0', () => {
    // 4 points over 30 px: x = 0, 10, 20, 30; the unread point (null) is a gap, not y = 10.
    expect(sparklinePoints([50, 60, null, 70], 100, 30, 10)).toEqual([
      '0.0,5.0 10.0,4.0',
      '30.0,3.0 30.0,3.0'
    ]);
    expect(sparklinePoints([null, 20, 30, null], 100, 30, 10)).toEqual(['10.0,8.0 20.0,7.0']);
    const drawn = sparklinePoints([80, null, null, 80, 80], 100, 40, 10).join(' ');
    expect(drawn).not.toContain(',10.0'); // never drops to the bottom (0 bytes)
  });
});

describe('empty states', () => {
  it('say why and what to do for every error kind', () => {
    const missing = errorState({ kind: 'extension-missing', status: 404, message: '' });
    expect(missing.hint).toContain('jupyter server extension enable qwen3_jupyter');
    const down = errorState({ kind: 'unreachable', status: null, message: '' });
    expect(down.hint).toContain('keeps retrying');
    const forbidden = errorState({ kind: 'forbidden', status: 403, message: '' });
    expect(forbidden.hint).toContain('sign in');
    const broken = errorState({ kind: 'server-error', status: 500, message: 'HTTP 500' });
    expect(broken.title).toContain('HTTP 500');
  });

  it("show the server's own explanation of an error", () => {
    const message = 'The GPU memory sampler has no reading yet; try again in a few seconds.';
    const state = errorState({ kind: 'server-error', status: 503, message, fromServer: true });
    expect(state.title).toBe(message);
    expect(state.hint).toContain('keeps retrying');
  });

  it('explain a missing GPU and fall back to host memory', () => {
    expect(noGpuState(metrics())).toBeNull();
    const state = noGpuState(
      metrics({
        available: false,
        gpus: [],
        reason:
          'NVML unavailable: the NVIDIA driver is not loaded; showing host and torch memory only'
      })
    );
    expect(state?.title).toBe('No GPU to show');
    expect(state?.hint).toMatch(
      /^NVML unavailable: the NVIDIA driver is not loaded\. Showing host/
    );
    expect(noGpuState(metrics({ gpus: [] }))?.hint).toMatch(/^NVML found no NVIDIA GPU\./);
  });

  it('explain an empty kernel list', () => {
    expect(noKernelsState(metrics())?.hint).toContain('Open a notebook');
    expect(noKernelsState(metrics({ kernels: [kernel('a', 0, 0, null)] }))).toBeNull();
  });
});

describe('notes', () => {
  it("show the reading's reason while some GPUs are still listed", () => {
    const reason = 'NVML error: GPU 1: GPU is lost';
    expect(panelNotes(metrics({ reason, notes: ['a note'] }))).toEqual([
      { text: reason, tone: 'warning' },
      { text: 'a note', tone: 'info' }
    ]);
    expect(panelNotes(metrics())).toEqual([]);
    // With no GPU left the empty state says it already.
    expect(panelNotes(metrics({ available: false, gpus: [], reason }))).toEqual([]);
  });

  it('say when the reading is stale', () => {
    expect(panelNotes(metrics({ stale: true, sample_age_s: 12.4 }))).toEqual([
      { text: 'Reading is 12 s old: the GPU driver is not answering.', tone: 'warning' }
    ]);
    expect(panelNotes(metrics({ stale: true }))[0].text).toContain('not answering');
    // An older server sends neither field; a fresh reading says nothing.
    expect(panelNotes(metrics({ stale: false, sample_age_s: 0.5 }))).toEqual([]);
  });
});

describe('status bar', () => {
  it('shows VRAM, or RAM without a GPU, or why not', () => {
    expect(statusBarText(metrics(), null)).toBe('GPU 2.0 / 80.0 GiB');
    expect(statusBarText(metrics({ available: false, gpus: [] }), null)).toBe('RAM 4.0 / 16.0 GiB');
    expect(statusBarText(null, null)).toBe('GPU: …');
    expect(statusBarText(null, { kind: 'unreachable', status: null, message: 'x' })).toBe('GPU: ?');
  });

  it('keeps the last figure, marked old, when the server stops answering', () => {
    // It said "GPU: ?" on a machine without a GPU, where it had shown RAM until then.
    const unreachable = { kind: 'unreachable' as const, status: null, message: 'TypeError' };
    const noGpu = metrics({ available: false, gpus: [] });
    const ram = statusBarState(noGpu, unreachable, DEFAULT_THRESHOLDS);
    expect(ram.text).toBe('RAM 4.0 / 16.0 GiB (old)');
    expect(ram.level).toBe('warning');
    expect(ram.title.split('\n')[1]).toBe(
      'The Jupyter server is not reachable. Showing the last reading.'
    );
    const gpuText = statusBarText(metrics(), unreachable);
    expect(gpuText).toBe('GPU 2.0 / 80.0 GiB (old)');
    // Stale and unreachable: one mark, not two.
    const stale = metrics({ stale: true, sample_age_s: 40 });
    expect(statusBarText(stale, unreachable)).toBe('GPU 2.0 / 80.0 GiB (old)');
    const lost = metrics({
      gpus: [],
      unread_gpus: [{ key: '0', index: 0, error: 'GPU is lost', lost: true }]
    });
    expect(statusBarState(lost, unreachable, DEFAULT_THRESHOLDS).level).toBe('critical');
  });
});

describe('a GPU that could not be read', () => {
  const lost = metrics({
    gpus: [],
    reason: 'NVML error: GPU 0: GPU is lost',
    unread_gpus: [{ key: '0', index: 0, error: 'GPU is lost', lost: true }]
  });

  it('is a row of its own, not "No GPU to show"', () => {
    expect(noGpuState(lost)).toBeNull();
    const state = unreadGpuState(lost.unread_gpus![0]);
    expect(state.title).toBe('GPU 0 — could not be read (GPU is lost)');
    expect(state.hint).toMatch(/reset/);
    expect(state.hint).toMatch(/reboot/);
    expect(state.hint).toMatch(/gone/);
    const other = unreadGpuState({ key: '1', index: 1, error: 'Unknown Error', lost: false });
    expect(other.title).toBe('GPU 1 — could not be read (Unknown Error)');
    expect(other.hint).not.toMatch(/gone/);
    // Its reason is the row already; no second note saying the same.
    expect(panelNotes(lost)).toEqual([]);
    // An older server sends no unread_gpus: no GPU is no GPU.
    expect(noGpuState(metrics({ gpus: [] }))?.title).toBe('No GPU to show');
  });

  it('makes the status bar say "GPU 0 lost" in the error colour', () => {
    const state = statusBarState(lost, null, DEFAULT_THRESHOLDS);
    expect(state.text).toBe('GPU 0 lost');
    expect(state.level).toBe('critical');
    expect(state.title).toContain('GPU 0: could not be read (GPU is lost)');
    expect(statusBarText(lost, null)).toBe('GPU 0 lost');
    const two = metrics({
      gpus: [gpu(1, 2 * GiB, 80 * GiB)],
      unread_gpus: [
        { key: '0', index: 0, error: 'GPU is lost', lost: true },
        { key: '2', index: 2, error: 'GPU is lost', lost: true }
      ]
    });
    expect(statusBarState(two, null, DEFAULT_THRESHOLDS).text).toBe('2 GPUs lost');
    const unread = metrics({
      unread_gpus: [{ key: '1', index: 1, error: 'Unknown Error', lost: false }]
    });
    expect(statusBarState(unread, null, DEFAULT_THRESHOLDS).text).toBe('GPU 1 unreadable');
  });
});

describe('status bar on a stale reading', () => {
  it('says how old the figure is, in the warning colour at least', () => {
    const old = metrics({ gpus: [gpu(0, 10 * GiB, 80 * GiB)], stale: true, sample_age_s: 95.4 });
    const state = statusBarState(old, null, DEFAULT_THRESHOLDS);
    expect(state.text).toBe('GPU 10.0 / 80.0 GiB (95 s old)');
    expect(state.level).toBe('warning');
    expect(state.title.split('\n')[1]).toBe(
      'Reading is 95 s old: the GPU driver is not answering.'
    );
    const fresh = metrics({ gpus: [gpu(0, 10 * GiB, 80 * GiB)] });
    expect(statusBarState(fresh, null, DEFAULT_THRESHOLDS).text).toBe('GPU 10.0 / 80.0 GiB');
  });
});

describe('status bar on several GPUs', () => {
  const four = metrics({
    gpus: [
      gpu(0, 10 * GiB, 80 * GiB),
      gpu(1, 5 * GiB, 40 * GiB, 0),
      gpu(1, 5 * GiB, 80 * GiB),
      gpu(2, 70 * GiB, 80 * GiB),
      gpu(3, 5 * GiB, 40 * GiB)
    ]
  });

  it('shows the fullest GPU and colours by the worst level', () => {
    const state = statusBarState(four, null, DEFAULT_THRESHOLDS);
    expect(state.text).toBe('GPU 2 70.0 / 80.0 GiB');
    expect(state.level).toBe('warning');
    for (const line of [
      'GPU 0: 10.0 / 80.0 GiB (13%)',
      'GPU 0 / MIG 1: 5.0 / 40.0 GiB (13%)',
      'GPU 1: 5.0 / 80.0 GiB (6%)',
      'GPU 2: 70.0 / 80.0 GiB (88%)',
      'GPU 3: 5.0 / 40.0 GiB (13%)'
    ]) {
      expect(state.title).toContain(line);
    }
  });

  it('keeps the plain figure on one GPU', () => {
    expect(statusBarState(metrics(), null, DEFAULT_THRESHOLDS).text).toBe('GPU 2.0 / 80.0 GiB');
    const ram = statusBarState(metrics({ available: false, gpus: [] }), null, DEFAULT_THRESHOLDS);
    expect(ram.text).toBe('RAM 4.0 / 16.0 GiB');
    expect(ram.level).toBe('ok');
  });
});

describe('notebook names', () => {
  const names = Array.from(
    { length: 10 },
    (_, i) =>
      `experiments/2024-06-finetune/very_long_notebook_name_for_ablation_run_${String(i).padStart(2, '0')}_lora_rank_64_lr_3e-4.ipynb`
  );
  const rows = names.map((path, i) => kernel(`k${i}`, 0, 0, path));

  it('keep the part that tells them apart, and their end', () => {
    const parts = kernelNameParts(rows[7], rows);
    expect(parts).toEqual({
      head: 'very_long_notebook_name_for_ablation_',
      tail: 'run_07_lora_rank_64_lr_',
      end: '3e-4.ipynb',
      folder: 'experiments/2024-06-finetune'
    });
  });

  /** The kept parts (tail and end) of notebooks named `names`, each against all of them. */
  const tails = (...names: string[]): string[] => {
    const ks = names.map((name, i) => kernel(`n${i}`, 0, 0, name));
    return ks.map(k => {
      const parts = kernelNameParts(k, ks);
      expect(parts.head + parts.tail + parts.end).toBe(k.notebook_path);
      return parts.tail + parts.end;
    });
  };

  /** The parts of `name` against notebooks named `others`. */
  const partsOf = (name: string, ...others: string[]): string[] => {
    const ks = [name, ...others].map((path, i) => kernel(`p${i}`, 0, 0, path));
    const { head, tail, end } = kernelNameParts(ks[0], ks);
    return [head, tail, end];
  };

  it('keep the end of a long name whatever other notebooks run', () => {
    // Alone, the whole name was the part kept, and the panel cut it at its end:
    // "experiment_run_2026_1…", version and extension gone.
    const name = 'experiment_run_2026_11_learning_rate_sweep_name_v1.ipynb';
    const alone = partsOf(name);
    expect(alone).toEqual(['experiment_run_2026_11_learning_rate_sweep_', '', 'name_v1.ipynb']);
    expect(partsOf(name, name.replace('_v1', '_v2'))).toEqual(alone);
    expect(partsOf(name, 'other.ipynb')).toEqual(alone);
    // A difference at the start: the start shrinks, the end stays.
    expect(
      partsOf(
        'Sweep01_with_a_long_descriptive_suffix.ipynb',
        'Sweep02_with_a_long_descriptive_suffix.ipynb'
      )
    ).toEqual(['Sweep01_with_a_long_descriptive_', '', 'suffix.ipynb']);
    // No word start near the end: cut at about 16 characters from it.
    expect(partsOf('averyveryverylongnamewithoutanyseparatorsatall.ipynb')[2]).toBe(
      'atorsatall.ipynb'
    );
    expect(partsOf('short_name.ipynb')).toEqual(['', '', 'short_name.ipynb']);
  });

  it('split CamelCase names at their words, keeping the part that differs short', () => {
    // The whole name was the tail (no separator to stop at), which the panel cuts at its end:
    // every row read "FineTuneLlamaExper…".
    expect(
      tails('FineTuneLlamaExperimentSweep01.ipynb', 'FineTuneLlamaExperimentSweep02.ipynb')
    ).toEqual(['Sweep01.ipynb', 'Sweep02.ipynb']);
    expect(
      tails('GPUUsageReportForTheWholeTeamQ1.ipynb', 'GPUUsageReportForTheWholeTeamQ2.ipynb')
    ).toEqual(['WholeTeamQ1.ipynb', 'WholeTeamQ2.ipynb']);
    // An acronym ends before the capital that starts the next word: "GPU", "Usage".
    expect(tails('MyGPUUsageReport.ipynb', 'MyGPUUsageSummary.ipynb')).toEqual([
      'UsageReport.ipynb',
      'UsageSummary.ipynb'
    ]);
    const [acronym] = tails(
      'AnalysisOfGPUUsageReportsFinal.ipynb',
      'AnalysisOfGPUUsageReportsDraft.ipynb'
    );
    expect(acronym).toBe('ReportsFinal.ipynb');
  });

  it('split where letters and digits meet', () => {
    expect(
      tails('finetune2026llamaexperimentv17.ipynb', 'finetune2026llamaexperimentv18.ipynb')
    ).toEqual(['17.ipynb', '18.ipynb']);
    // A difference at the start is in the head: its start is what shows (the head shrinks
    // from its end).
    expect(
      tails(
        'Sweep01_with_a_long_descriptive_suffix.ipynb',
        'Sweep02_with_a_long_descriptive_suffix.ipynb'
      )
    ).toEqual(['suffix.ipynb', 'suffix.ipynb']);
  });

  it('cut a name in one long word where it differs', () => {
    const [a, b] = tails(
      'finetunellamaexperimentsweepalpha.ipynb',
      'finetunellamaexperimentsweepbeta.ipynb'
    );
    expect([a, b]).toEqual(['alpha.ipynb', 'beta.ipynb']);
  });

  it("name a console's kernel after the console", () => {
    const console1 = { ...kernel('c0ffee0123456789', 0, 0, null), console_name: 'Console 1' };
    expect(kernelLabel(console1)).toBe('Console 1');
    expect(kernelNameParts(console1, [console1]).end).toBe('Console 1');
    const held = { ...console1, gpu_memory_total: 5 * GiB };
    const title = statusBarState(metrics({ kernels: [held] }), null, DEFAULT_THRESHOLDS).title;
    expect(title).toContain('Largest notebook: Console 1 (5.0 GiB)');
  });

  it('show the folder of two notebooks with the same name', () => {
    const a = kernel('a', 0, 0, 'exp-a/train.ipynb');
    const b = kernel('b', 0, 0, 'exp-b/train.ipynb');
    expect(kernelNameParts(a, [a, b])).toEqual({
      head: '',
      tail: '',
      end: 'train.ipynb',
      folder: 'exp-a'
    });
    expect(kernelNameParts(kernel('c', 0, 0, 'top.ipynb'), []).folder).toBe('');
    expect(kernelNameParts(kernel('0123456789abcdef', 0, 0, null), []).end).toBe('Kernel 01234567');
  });

  it('give the whole folder, for the panel to cut at its start', () => {
    // Cut to 48 characters in the middle here, then at its end by the panel: both rows read
    // "projects/2026/very…er_nam…", "run_a" and "run_b" gone.
    const folder = 'projects/2026/very_long_folder_name_for_experiments';
    const a = kernel('a', 0, 0, `${folder}/run_a/train.ipynb`);
    const b = kernel('b', 0, 0, `${folder}/run_b/train.ipynb`);
    expect(kernelNameParts(a, [a, b]).folder).toBe(`${folder}/run_a`);
    expect(kernelNameParts(b, [a, b]).folder).toBe(`${folder}/run_b`);
  });
});

describe('per-GPU VRAM of a notebook', () => {
  it('lists each GPU it uses, largest first', () => {
    const k = kernel('a', 67 * GiB, 0, 'a.ipynb');
    // GPU 0's own figure holds its MIG instance's: only the instance is listed.
    k.gpu_memory = { '0': 5 * GiB, '0/0': 5 * GiB, '1': 0, '2': 62 * GiB, '3': null };
    expect(kernelVramTooltip(k)).toBe(
      'GPU memory of the kernel and its child processes\n' +
        'GPU 2: 62.0 GiB · GPU 0 / MIG 0: 5.0 GiB · GPU 3: unknown'
    );
    const none = kernel('b', 0, 0, 'b.ipynb');
    expect(kernelVramTooltip(none)).toBe('GPU memory of the kernel and its child processes');
  });
});

describe('sparkline inset and span', () => {
  it('draws 0 inside the box, not on its clipped edge', () => {
    expect(sparklinePoints([0, 100], 100, 10, 10, 1)).toEqual(['0.0,9.0 10.0,1.0']);
  });

  it('says what span it covers', () => {
    expect(sparklineTitle([0, 30, 60])).toBe('Last 1 min');
    expect(sparklineTitle([0, 45])).toBe('Last 45 s');
    expect(sparklineTitle([0, 150])).toBe('Last 3 min');
    expect(sparklineTitle([5])).toBe('');
  });
});

describe('the Free memory button of a row', () => {
  it('says a dead kernel is dead, not that it should load the extension', () => {
    const dead = { ...kernel('a', null, null, 'a.ipynb'), execution_state: 'dead' };
    expect(freeMemoryAction(dead)).toEqual({ title: DEAD_KERNEL_HINT, hint: DEAD_KERNEL_HINT });
    expect(DEAD_KERNEL_HINT).toMatch(/^This kernel is dead.*Restart it/);
    const plain = kernel('b', 0, 0, 'b.ipynb');
    expect(freeMemoryAction(plain).hint).toBe(LOAD_EXTENSION_HINT);
    const loaded = { ...plain, extension_loaded: true };
    expect(freeMemoryAction(loaded)).toEqual({
      title: 'Run qwen3_jupyter.cleanup() in this kernel',
      hint: null
    });
  });
});
