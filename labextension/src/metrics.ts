/**
 * The JSON that `GET /qwen3-jupyter/metrics` returns; names mirror the server's keys exactly.
 *
 * Sizes are bytes. A `null` size means "unknown" (NVML could not attribute it), never zero.
 * Per-GPU maps are keyed by the GPU's `key` (its NVML index, "parent/slot" for MIG instances).
 */

export interface IGpuMetrics {
  /** Key of this GPU in every per-GPU map: "0", or "0/1" for MIG instance 1 of GPU 0. */
  key: string;
  index: number;
  uuid: string;
  name: string;
  memory_used: number;
  memory_total: number;
  utilization: number | null;
  mig_parent: number | null;
  memory_source: string;
}

/**
 * A GPU NVML counted but could not read in this sample (lost mid-session, fallen off the bus):
 * `gpus` lists only what answered, so without this entry the GPU would simply vanish.
 */
export interface IUnreadGpu {
  /** As `IGpuMetrics.key`; always a physical GPU ("0"), never a MIG slot. */
  key: string;
  index: number;
  /** NVML's message, e.g. "GPU is lost"; null when it gave none. */
  error: string | null;
  /** True when NVML reported the GPU lost: only a GPU reset or a reboot brings it back. */
  lost: boolean;
}

export interface IHostMetrics {
  total: number;
  available: number;
  used: number;
  /** "cgroup" when total/used are the container's memory limit, else "host". */
  source: 'host' | 'cgroup';
}

export interface IKernelMetrics {
  kernel_id: string;
  name: string;
  /** The notebook using this kernel (a notebook before a console opened on it), or null. */
  notebook_path: string | null;
  /**
   * The console ("Console 1") of a kernel only a console uses: its path is no file to open.
   * Null otherwise; absent from older servers.
   */
  console_name?: string | null;
  pid: number | null;
  rss: number | null;
  gpu_memory: Record<string, number | null>;
  gpu_memory_total: number | null;
  extension_loaded: boolean;
  execution_state: string;
}

export interface IOtherProcesses {
  gpu_memory: Record<string, number | null>;
}

export interface IHistory {
  timestamps: number[];
  /**
   * Memory in use per GPU at each timestamp; `null` where the GPU could not be read in that
   * sample (lost for a moment): a gap, never zero. Older servers sent 0 there.
   */
  gpu_memory_used: Record<string, (number | null)[]>;
  host_used: number[];
}

export interface IMetrics {
  available: boolean;
  reason: string | null;
  timestamp: number;
  driver_version: string | null;
  gpus: IGpuMetrics[];
  /**
   * GPUs that could not be read in this sample (see `IUnreadGpu`). Absent from older servers:
   * read a missing list as empty.
   */
  unread_gpus?: IUnreadGpu[];
  host: IHostMetrics;
  kernels: IKernelMetrics[];
  other_processes: IOtherProcesses;
  history: IHistory;
  notes: string[];
  sample_interval: number;
  /**
   * True when the sample is older than it should be because the GPU driver stopped answering
   * (the server then answers at once with its last sample). Absent from older servers.
   */
  stale?: boolean;
  /** Age of the sample in seconds. Absent from older servers. */
  sample_age_s?: number;
}

/** Why the endpoint gave no metrics; each kind has its own message and remedy. */
export type MetricsErrorKind = 'extension-missing' | 'forbidden' | 'unreachable' | 'server-error';

export interface IMetricsError {
  kind: MetricsErrorKind;
  status: number | null;
  message: string;
  /**
   * True when `message` is the server's own explanation (the JSON body's "message"); on a
   * 'forbidden' error, that the user is signed in but lacks the permission.
   */
  fromServer?: boolean;
}

/** The kernel-side reply to `{"action": "cleanup"}` on the `qwen3_jupyter` comm. */
export interface ICleanupReply {
  action: 'cleanup';
  ok: boolean;
  freed_bytes?: number;
  summary?: string;
  report?: Record<string, unknown>;
  error?: string;
}
