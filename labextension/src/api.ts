/**
 * Client of the server extension's endpoint, and the kernel-side "Free memory" comm.
 *
 * Requests go through `ServerConnection.makeRequest`, so the token, XSRF cookie and base URL
 * (JupyterHub) come from the page's own settings.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { Kernel, KernelMessage, ServerConnection } from '@jupyterlab/services';

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

/**
 * One reading of the metrics endpoint. `intervalMs` is how often this client polls: the server
 * keeps its sampler running for a few such intervals, so a slow poll still finds a running
 * sampler and a whole sparkline (without it, the server stops sampling after its idle timeout).
 */
export async function fetchMetrics(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings(),
  intervalMs?: number
): Promise<IMetrics> {
  let url = URLExt.join(settings.baseUrl, ...METRICS_PATH);
  if (intervalMs !== undefined && Number.isFinite(intervalMs) && intervalMs > 0) {
    url += URLExt.objectToQueryString({ interval: String(intervalMs / 1000) });
  }
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
    // Not signed in: a bare "Forbidden". Signed in without the permission: the authorizer's
    // own words ("User is not authorized to read on resource: kernels.").
    const explanation = await errorMessage(response);
    const denied = response.status === 403 && explanation !== null && explanation !== 'Forbidden';
    throw new MetricsRequestError({
      kind: 'forbidden',
      status: response.status,
      message: denied ? explanation : `GET /qwen3-jupyter/metrics answered ${response.status}`,
      fromServer: denied
    });
  }
  if (!response.ok) {
    const explanation = await errorMessage(response);
    throw new MetricsRequestError({
      kind: 'server-error',
      status: response.status,
      message: explanation ?? `HTTP ${response.status} ${response.statusText}`.trim(),
      fromServer: explanation !== null
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

/**
 * The explanation in an error response's JSON body (Jupyter's APIHandler error format,
 * `{"message": ..., "reason": ...}`), or null when there is none.
 */
async function errorMessage(response: Response): Promise<string | null> {
  try {
    const body = (await response.json()) as { message?: unknown; reason?: unknown } | null;
    for (const value of [body?.message, body?.reason]) {
      if (typeof value === 'string' && value.trim()) {
        return value.trim();
      }
    }
  } catch {
    // Not JSON (a proxy's HTML page, an empty body): the status line is all there is.
  }
  return null;
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
 * current cell finishes: while `stillBusy()` says the kernel runs a cell (the server's view of it,
 * which this fresh connection may not have), the request waits past `timeoutMs`, however long
 * the cell takes; the timeout ends only a wait on a kernel that is not busy.
 *
 * `kernel` should not handle comms (`handleComms: false`): the comm is opened, read and closed
 * by hand. Why: a connection that handles comms closes every comm the kernel opens that it has
 * no target for, and this request stays open for as long as the running cell takes, so the
 * widgets that cell creates (a progress bar, a slider) would be closed under the notebook. The
 * messages carry no subshell id, so the kernel runs the cleanup on its main shell, between
 * cells, like a cell.
 */
export function requestCleanup(
  kernel: Kernel.IKernelConnection,
  timeoutMs = 120_000,
  stillBusy: () => boolean = () => false
): Promise<ICleanupReply> {
  return new Promise<ICleanupReply>((resolve, reject) => {
    const commId = newCommId();
    let settled = false;
    const finish = (result: ICleanupReply | CleanupError, closeAfter: boolean): void => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      kernel.iopubMessage.disconnect(onIOPub);
      kernel.statusChanged.disconnect(onStatus);
      kernel.disposed.disconnect(onDisposed);
      if (result instanceof CleanupError) {
        reject(result);
      } else {
        resolve(result);
      }
      if (closeAfter) {
        try {
          closeComm(kernel, commId);
        } catch {
          // The kernel went away meanwhile: nothing left to close.
        }
      }
    };
    const onIOPub = (_: Kernel.IKernelConnection, msg: KernelMessage.IIOPubMessage): void => {
      const content = msg.content as { comm_id?: string; data?: unknown };
      if (content.comm_id !== commId) {
        return;
      }
      if (msg.header.msg_type === 'comm_close') {
        finish(
          new CleanupError('The kernel closed the comm: the extension is not loaded.', true),
          false
        );
        return;
      }
      const data = content.data as ICleanupReply | undefined;
      if (msg.header.msg_type !== 'comm_msg' || data?.action !== 'cleanup') {
        return;
      }
      if (data.ok) {
        finish(data, true);
      } else {
        finish(new CleanupError(data.error ?? 'The cleanup failed in the kernel.'), true);
      }
    };
    // A kernel that dies or restarts drops the queued request: say so now, not at the timeout.
    // ('starting' is how a restart from the notebook shows here: the new kernel says it on
    // IOPub; only the server's auto-restart sends 'restarting'.)
    const ended: Kernel.Status[] = ['dead', 'restarting', 'autorestarting', 'starting'];
    const onStatus = (_: Kernel.IKernelConnection, status: Kernel.Status): void => {
      if (ended.includes(status)) {
        const what = status === 'dead' ? 'stopped' : 'restarted';
        finish(new CleanupError(`The kernel ${what} before the cleanup ran.`), false);
      }
    };
    const onDisposed = (): void =>
      finish(new CleanupError('The connection to the kernel closed before an answer.'), false);
    const onTimeout = (): void => {
      const sent = kernel.connectionStatus === 'connected';
      if (sent && stillBusy()) {
        // A cell longer than the timeout: its end brings the answer, which the sidebar shows.
        timer = setTimeout(onTimeout, timeoutMs);
        return;
      }
      finish(
        new CleanupError(
          sent
            ? `No answer after ${Math.round(timeoutMs / 1000)} s: the kernel is still busy. ` +
                'The cleanup stays queued and runs when the running cell ends.'
            : `Could not reach the kernel in ${Math.round(timeoutMs / 1000)} s.`
        ),
        sent
      );
    };
    let timer = setTimeout(onTimeout, timeoutMs);
    kernel.iopubMessage.connect(onIOPub);
    kernel.statusChanged.connect(onStatus);
    kernel.disposed.connect(onDisposed);
    try {
      openComm(kernel, commId);
    } catch (reason) {
      finish(new CleanupError(`Could not reach the kernel: ${String(reason)}`), false);
    }
  });
}

/** Open the comm on the main shell (no subshell id); the kernel sends no reply to it. */
function openComm(kernel: Kernel.IKernelConnection, commId: string): void {
  const msg = KernelMessage.createMessage<KernelMessage.ICommOpenMsg<'shell'>>({
    msgType: 'comm_open',
    channel: 'shell',
    session: kernel.clientId,
    username: kernel.username,
    content: { comm_id: commId, target_name: COMM_TARGET, data: { action: 'cleanup' } }
  });
  kernel.sendShellMessage(msg, false, true);
}

/** Close the comm again (nothing to do when the kernel went away meanwhile). */
function closeComm(kernel: Kernel.IKernelConnection, commId: string): void {
  if (kernel.isDisposed || kernel.status === 'dead') {
    return;
  }
  const msg = KernelMessage.createMessage<KernelMessage.ICommCloseMsg<'shell'>>({
    msgType: 'comm_close',
    channel: 'shell',
    session: kernel.clientId,
    username: kernel.username,
    content: { comm_id: commId, data: {} }
  });
  kernel.sendShellMessage(msg, false, true);
}

/** A random comm id (crypto.randomUUID needs a secure context; a plain-http Lab is not one). */
function newCommId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, byte => byte.toString(16).padStart(2, '0')).join('');
}
