/**
 * Client of the server extension's endpoint, and the kernel-side "Free memory" comm.
 *
 * Requests go through `ServerConnection.makeRequest`, so the token, XSRF cookie and base URL
 * (JupyterHub) come from the page's own settings.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { Kernel, ServerConnection } from '@jupyterlab/services';

import type { ICleanupReply, IMetrics, IMetricsError } from './metrics';

export const METRICS_PATH = ['qwen3-jupyter', 'metrics'];

/** The comm target the kernel registers on `%load_ext qwen3_jupyter`. */
export const COMM_TARGET = 'qwen3_jupyter';

/** Thrown by `fetchMetrics`; `detail` says which empty state to show. */
export class MetricsRequestError extends Error {
  constructor(readonly detail: IMetricsError) {
    super(detail.message);
  }
}

export async function fetchMetrics(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<IMetrics> {
  const url = URLExt.join(settings.baseUrl, ...METRICS_PATH);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, { method: 'GET' }, settings);
  } catch (reason) {
    throw new MetricsRequestError({
      kind: 'unreachable',
      status: null,
      message: String(reason)
    });
  }
  if (response.status === 404) {
    throw new MetricsRequestError({
      kind: 'extension-missing',
      status: 404,
      message: 'GET /qwen3-jupyter/metrics answered 404'
    });
  }
  if (response.status === 401 || response.status === 403) {
    throw new MetricsRequestError({
      kind: 'forbidden',
      status: response.status,
      message: `GET /qwen3-jupyter/metrics answered ${response.status}`
    });
  }
  if (!response.ok) {
    throw new MetricsRequestError({
      kind: 'server-error',
      status: response.status,
      message: `HTTP ${response.status} ${response.statusText}`
    });
  }
  try {
    return (await response.json()) as IMetrics;
  } catch (reason) {
    throw new MetricsRequestError({
      kind: 'server-error',
      status: response.status,
      message: `invalid JSON (${String(reason)})`
    });
  }
}

/** Why a cleanup request gave no report. */
export class CleanupError extends Error {
  constructor(
    message: string,
    readonly notLoaded: boolean = false
  ) {
    super(message);
  }
}

/**
 * Ask a kernel that loaded the extension to run `qwen3_jupyter.cleanup.cleanup()`.
 *
 * Only opens a comm to the extension's own target: a kernel without it closes the comm at once
 * (rejected with `notLoaded`), and no code is ever executed. A busy kernel answers when its
 * current cell finishes, hence the generous timeout.
 */
export function requestCleanup(
  kernel: Kernel.IKernelConnection,
  timeoutMs = 120_000
): Promise<ICleanupReply> {
  return new Promise<ICleanupReply>((resolve, reject) => {
    const comm = kernel.createComm(COMM_TARGET);
    let settled = false;
    const finish = (result: ICleanupReply | CleanupError): void => {
      if (settled) {
        return;
      }
      settled = true;
      window.clearTimeout(timer);
      if (result instanceof CleanupError) {
        reject(result);
      } else {
        resolve(result);
      }
      if (!comm.isDisposed) {
        try {
          comm.close();
        } catch {
          // The kernel already closed it.
        }
      }
    };
    const timer = window.setTimeout(
      () => finish(new CleanupError('The kernel did not answer in time; it may be busy.')),
      timeoutMs
    );
    comm.onMsg = msg => {
      const data = msg.content.data as unknown as ICleanupReply;
      if (data?.action !== 'cleanup') {
        return;
      }
      if (data.ok) {
        finish(data);
      } else {
        finish(new CleanupError(data.error ?? 'The cleanup failed in the kernel.'));
      }
    };
    comm.onClose = () =>
      finish(new CleanupError('The kernel closed the comm: the extension is not loaded.', true));
    comm.open({ action: 'cleanup' });
  });
}
