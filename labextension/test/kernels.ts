import type { IKernelMetrics } from '../src/metrics';

/** A kernel as the metrics endpoint lists it: idle, with the extension loaded, no memory. */
export function kernel(partial: Partial<IKernelMetrics> = {}): IKernelMetrics {
  return {
    kernel_id: 'k1',
    name: 'python3',
    notebook_path: 'train.ipynb',
    pid: 4242,
    rss: 0,
    gpu_memory: {},
    gpu_memory_total: 0,
    extension_loaded: true,
    execution_state: 'idle',
    ...partial
  };
}
