import { KernelMessage, ServerConnection } from '@jupyterlab/services';
import type { Kernel } from '@jupyterlab/services';
import { Signal } from '@lumino/signaling';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import {
  COMM_TARGET,
  CleanupError,
  fetchMetrics,
  MetricsRequestError,
  requestCleanup
} from '../src/api';
import { errorState } from '../src/format';

/** A signal that counts its connections: a settled request must leave none behind. */
class CountedSignal<S, T> extends Signal<S, T> {
  connections = 0;

  connect(slot: Signal.Slot<S, T>, thisArg?: unknown): boolean {
    this.connections += 1;
    return super.connect(slot, thisArg);
  }

  disconnect(slot: Signal.Slot<S, T>, thisArg?: unknown): boolean {
    this.connections -= 1;
    return super.disconnect(slot, thisArg);
  }
}

/** The part of a kernel connection `requestCleanup` uses: IOPub, status and disposal in, shell
 * messages out. */
class FakeConnection {
  readonly iopubMessage = new CountedSignal<this, KernelMessage.IIOPubMessage>(this);
  readonly statusChanged = new CountedSignal<this, Kernel.Status>(this);
  readonly disposed = new CountedSignal<this, void>(this);
  readonly sent: { msg: KernelMessage.IShellMessage; expectReply: boolean; dispose: boolean }[] =
    [];
  readonly clientId = 'client';
  readonly username = 'user';
  isDisposed = false;
  status: Kernel.Status = 'busy';
  connectionStatus: Kernel.ConnectionStatus = 'connected';

  sendShellMessage(msg: KernelMessage.IShellMessage, expectReply = false, dispose = true): void {
    if (this.status === 'dead') {
      throw new Error('Kernel is dead');
    }
    this.sent.push({ msg, expectReply, dispose });
  }

  /** The kernel's side: an IOPub comm message for `commId` (default: the request's comm). */
  answer(
    msgType: 'comm_msg' | 'comm_close',
    data: Record<string, unknown>,
    commId = (this.sent[0].msg.content as { comm_id: string }).comm_id
  ): void {
    const msg = KernelMessage.createMessage({
      msgType,
      channel: 'iopub',
      session: 'kernel',
      content: { comm_id: commId, data }
    } as KernelMessage.IOptions<KernelMessage.ICommMsgMsg<'iopub'>>);
    this.iopubMessage.emit(msg as KernelMessage.IIOPubMessage);
  }

  get types(): string[] {
    return this.sent.map(({ msg }) => msg.header.msg_type);
  }

  get listeners(): number {
    return (
      this.iopubMessage.connections + this.statusChanged.connections + this.disposed.connections
    );
  }
}

function request(
  fake: FakeConnection,
  timeoutMs?: number,
  stillBusy?: () => boolean
): Promise<unknown> {
  return requestCleanup(fake as unknown as Kernel.IKernelConnection, timeoutMs, stillBusy);
}

async function failure(reply: Promise<unknown>): Promise<CleanupError> {
  const reason = await reply.then(
    () => null,
    (error: unknown) => error
  );
  expect(reason).toBeInstanceOf(CleanupError);
  return reason as CleanupError;
}

describe('requestCleanup', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('opens its comm on the main shell and closes it after the report', async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    const { msg: open, expectReply, dispose } = fake.sent[0];
    expect(open.header.msg_type).toBe('comm_open');
    expect(open.channel).toBe('shell');
    expect(open.content).toMatchObject({ target_name: COMM_TARGET, data: { action: 'cleanup' } });
    expect((open.header as { subshell_id?: string | null }).subshell_id ?? null).toBeNull();
    expect([expectReply, dispose]).toEqual([false, true]); // a comm_open gets no reply
    fake.answer('comm_msg', { action: 'cleanup', ok: false }, 'someone-else');
    fake.answer('comm_msg', { action: 'cleanup', ok: true, freed_bytes: 5, summary: 'freed 5 B' });
    await expect(reply).resolves.toMatchObject({ ok: true, freed_bytes: 5 });
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    expect(fake.sent[1].msg.content).toMatchObject({ comm_id: open.content.comm_id });
    expect(fake.listeners).toBe(0);
  });

  it("passes on the kernel's error and closes the comm", async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    fake.answer('comm_msg', { action: 'cleanup', ok: false, error: 'RuntimeError: boom' });
    const error = await failure(reply);
    expect(error.message).toBe('RuntimeError: boom');
    expect(error.notLoaded).toBe(false);
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
  });

  it('reads a closed comm as the extension not loaded, and sends nothing more', async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    fake.answer('comm_close', {});
    expect((await failure(reply)).notLoaded).toBe(true);
    expect(fake.types).toEqual(['comm_open']);
    expect(fake.listeners).toBe(0);
  });

  it('says a request that timed out still runs when the cell ends', async () => {
    const fake = new FakeConnection();
    const reply = request(fake, 120_000);
    vi.advanceTimersByTime(120_000);
    const error = await failure(reply);
    expect(error.message).toBe(
      'No answer after 120 s: the kernel is still busy. The cleanup stays queued and runs ' +
        'when the running cell ends.'
    );
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    expect(fake.listeners).toBe(0);
  });

  it('waits past the timeout while the server sees the cell run, then passes on the report', async () => {
    // A cell longer than the timeout (a training loop): the cleanup runs when it ends. The
    // request timed out at 120 s in red, and the report that came later was shown nowhere.
    const fake = new FakeConnection();
    let settled = false;
    const reply = request(fake, 120_000, () => true);
    void reply.then(
      () => (settled = true),
      () => (settled = true)
    );
    await vi.advanceTimersByTimeAsync(10 * 120_000);
    expect(settled).toBe(false);
    expect(fake.types).toEqual(['comm_open']);
    fake.answer('comm_msg', { action: 'cleanup', ok: true, freed_bytes: 7, summary: 'freed 7 B' });
    await expect(reply).resolves.toMatchObject({ ok: true, freed_bytes: 7 });
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    expect(fake.listeners).toBe(0);
  });

  it('times out once the server no longer sees the kernel busy', async () => {
    const fake = new FakeConnection();
    let busy = true;
    const reply = request(fake, 120_000, () => busy);
    await vi.advanceTimersByTimeAsync(120_000);
    busy = false;
    vi.advanceTimersByTime(120_000);
    expect((await failure(reply)).message).toMatch(/^No answer after 120 s/);
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    expect(fake.listeners).toBe(0);
  });

  it('does not claim a queued cleanup when the connection never opened', async () => {
    const fake = new FakeConnection();
    fake.connectionStatus = 'connecting';
    const reply = request(fake, 120_000);
    vi.advanceTimersByTime(120_000);
    expect((await failure(reply)).message).toBe('Could not reach the kernel in 120 s.');
    expect(fake.types).toEqual(['comm_open']);
  });

  it.each([
    ['dead', 'The kernel stopped before the cleanup ran.'],
    ['restarting', 'The kernel restarted before the cleanup ran.'],
    ['autorestarting', 'The kernel restarted before the cleanup ran.'],
    ['starting', 'The kernel restarted before the cleanup ran.']
  ] as [Kernel.Status, string][])(
    'ends at once when the kernel goes %s',
    async (status, message) => {
      const fake = new FakeConnection();
      const reply = request(fake);
      fake.status = status;
      fake.statusChanged.emit(status);
      expect((await failure(reply)).message).toBe(message);
      expect(fake.types).toEqual(['comm_open']);
      expect(fake.listeners).toBe(0);
    }
  );

  it('ends at once when its connection is disposed', async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    fake.isDisposed = true;
    fake.disposed.emit();
    expect((await failure(reply)).message).toBe(
      'The connection to the kernel closed before an answer.'
    );
    expect(fake.types).toEqual(['comm_open']);
    expect(fake.listeners).toBe(0);
  });

  it('says why when the kernel is already dead', async () => {
    const fake = new FakeConnection();
    fake.status = 'dead';
    const error = await failure(request(fake));
    expect(error.message).toBe('Could not reach the kernel: Error: Kernel is dead');
    expect(fake.listeners).toBe(0);
  });
});

describe('fetchMetrics', () => {
  const settings = ServerConnection.makeSettings({ baseUrl: 'http://lab.test/' });

  afterEach(() => {
    vi.restoreAllMocks();
  });

  async function failure(response: Response): Promise<MetricsRequestError> {
    vi.spyOn(ServerConnection, 'makeRequest').mockResolvedValue(response);
    const error = await fetchMetrics(settings).catch((reason: unknown) => reason);
    expect(error).toBeInstanceOf(MetricsRequestError);
    return error as MetricsRequestError;
  }

  it("shows the server's explanation of a 503", async () => {
    const message = 'The GPU memory sampler has no reading yet; try again in a few seconds.';
    const error = await failure(
      new Response(JSON.stringify({ message, reason: null }), {
        status: 503,
        statusText: 'Service Unavailable',
        headers: { 'Content-Type': 'application/json' }
      })
    );
    expect(error.detail).toMatchObject({ kind: 'server-error', status: 503, message });
    expect(errorState(error.detail).title).toBe(message);
  });

  it('tells a user without permission so, not that they are signed out', async () => {
    const json = (status: number, message: string): Response =>
      new Response(JSON.stringify({ message, reason: null }), {
        status,
        headers: { 'Content-Type': 'application/json' }
      });
    const denied = await failure(json(403, 'User is not authorized to read on resource: kernels.'));
    expect(denied.detail).toMatchObject({
      kind: 'forbidden',
      status: 403,
      message: 'User is not authorized to read on resource: kernels.',
      fromServer: true
    });
    const state = errorState(denied.detail);
    expect(state.title).toBe('User is not authorized to read on resource: kernels.');
    expect(state.hint).toContain('lacks the permission');
    expect(state.hint).not.toContain('token');
    // Not signed in: jupyter_server's bare "Forbidden".
    for (const response of [json(403, 'Forbidden'), json(401, 'Unauthorized')]) {
      const signedOut = errorState((await failure(response)).detail);
      expect(signedOut.title).toBe('The server refused the request (not signed in).');
      expect(signedOut.hint).toContain('token');
      vi.restoreAllMocks();
    }
  });

  it('tells the server how often it polls', async () => {
    const ok = new Response(JSON.stringify({ available: false }), { status: 200 });
    const request = vi.spyOn(ServerConnection, 'makeRequest').mockResolvedValue(ok);
    await fetchMetrics(settings, 300_000);
    expect(request.mock.calls[0][0]).toBe('http://lab.test/qwen3-jupyter/metrics?interval=300');
    request.mockResolvedValue(new Response('{}', { status: 200 }));
    await fetchMetrics(settings);
    expect(request.mock.calls[1][0]).toBe('http://lab.test/qwen3-jupyter/metrics');
  });

  it('falls back to the status line without a JSON message', async () => {
    const error = await failure(
      new Response('<html>Bad gateway</html>', { status: 502, statusText: 'Bad Gateway' })
    );
    expect(error.detail.message).toBe('HTTP 502 Bad Gateway');
    expect(errorState(error.detail).title).toBe(
      'The metrics endpoint failed: HTTP 502 Bad Gateway'
    );
  });
});
