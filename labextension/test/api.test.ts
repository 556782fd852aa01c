import { KernelMessage } from '@jupyterlab/services';
import type { Kernel } from '@jupyterlab/services';
import { Signal } from '@lumino/signaling';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { COMM_TARGET, CleanupError, requestCleanup } from '../src/api';

/** The part of a kernel connection `requestCleanup` uses: IOPub in, shell messages out. */
class FakeConnection {
  readonly iopubMessage = new Signal<this, KernelMessage.IIOPubMessage>(this);
  readonly sent: KernelMessage.IShellMessage[] = [];
  readonly clientId = 'client';
  readonly username = 'user';
  readonly isDisposed = false;
  readonly status = 'busy';

  sendShellMessage(msg: KernelMessage.IShellMessage): void {
    this.sent.push(msg);
  }

  /** The kernel's side: an IOPub comm message for the comm the request opened. */
  answer(msgType: 'comm_msg' | 'comm_close', data: Record<string, unknown>): void {
    const commId = (this.sent[0].content as { comm_id: string }).comm_id;
    const msg = KernelMessage.createMessage({
      msgType,
      channel: 'iopub',
      session: 'kernel',
      content: { comm_id: commId, data }
    } as KernelMessage.IOptions<KernelMessage.ICommMsgMsg<'iopub'>>);
    this.iopubMessage.emit(msg as KernelMessage.IIOPubMessage);
  }

  get types(): string[] {
    return this.sent.map(msg => msg.header.msg_type);
  }
}

function request(fake: FakeConnection, timeoutMs?: number): Promise<unknown> {
  return requestCleanup(fake as unknown as Kernel.IKernelConnection, timeoutMs);
}

describe('requestCleanup', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('opens its comm on the main shell and closes it after the report', async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    const open = fake.sent[0];
    expect(open.header.msg_type).toBe('comm_open');
    expect(open.channel).toBe('shell');
    expect(open.content).toMatchObject({ target_name: COMM_TARGET, data: { action: 'cleanup' } });
    expect((open.header as { subshell_id?: string }).subshell_id ?? null).toBeNull();
    fake.iopubMessage.emit(
      KernelMessage.createMessage({
        msgType: 'comm_msg',
        channel: 'iopub',
        session: 'kernel',
        content: { comm_id: 'someone-else', data: { action: 'cleanup', ok: false } }
      }) as KernelMessage.IIOPubMessage
    );
    fake.answer('comm_msg', { action: 'cleanup', ok: true, freed_bytes: 5, summary: 'freed 5 B' });
    await expect(reply).resolves.toMatchObject({ ok: true, freed_bytes: 5 });
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    expect(fake.sent[1].content).toMatchObject({ comm_id: open.content.comm_id });
  });

  it('reads a closed comm as the extension not loaded, and sends nothing more', async () => {
    const fake = new FakeConnection();
    const reply = request(fake);
    fake.answer('comm_close', {});
    const error = await reply.catch((reason: unknown) => reason);
    expect(error).toBeInstanceOf(CleanupError);
    expect((error as CleanupError).notLoaded).toBe(true);
    expect(fake.types).toEqual(['comm_open']);
  });

  it('says a request that timed out still runs when the cell ends', async () => {
    const fake = new FakeConnection();
    const reply = request(fake, 120_000).catch((reason: unknown) => reason);
    vi.advanceTimersByTime(120_000);
    const error = (await reply) as CleanupError;
    expect(error.message).toBe(
      'No answer after 120 s: the kernel is still busy. The cleanup stays queued and runs ' +
        'when the running cell ends.'
    );
    expect(error.notLoaded).toBe(false);
    expect(fake.types).toEqual(['comm_open', 'comm_close']);
    fake.answer('comm_msg', { action: 'cleanup', ok: true, freed_bytes: 1, summary: '' });
    expect(fake.types).toHaveLength(2); // a late answer changes nothing
  });
});
