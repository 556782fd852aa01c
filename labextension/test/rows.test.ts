import { describe, expect, it } from 'vitest';

import { kernel } from './kernels';

import {
  IRowMessage,
  keepRowStatus,
  outcomeApplies,
  ROW_MESSAGE_TTL_MS,
  rowButtons,
  rowStatus
} from '../src/rows';

const freed: IRowMessage = { pending: null, tone: 'success', text: 'Nothing to free' };
const waiting: IRowMessage = {
  pending: 'free',
  tone: 'info',
  text: 'Waiting for the running cell…'
};
const shuttingDown: IRowMessage = { pending: 'shutdown', tone: 'info', text: 'Shutting down…' };

describe('row buttons', () => {
  it('keep "Shut down" usable while a cleanup waits for a running cell', () => {
    // Both were disabled: a runaway cell left no way out from the sidebar.
    const busy = kernel({ execution_state: 'busy' });
    expect(rowButtons(rowStatus(busy, waiting))).toEqual({
      freeDisabled: true,
      shutdownDisabled: false
    });
    expect(rowButtons(rowStatus(busy, shuttingDown))).toEqual({
      freeDisabled: true,
      shutdownDisabled: true
    });
    expect(rowButtons(rowStatus(busy, freed))).toEqual({
      freeDisabled: false,
      shutdownDisabled: false
    });
    expect(rowButtons(undefined)).toEqual({ freeDisabled: false, shutdownDisabled: false });
  });

  it('let a shutdown keep its row: the wait it ends does not say "Free memory failed"', () => {
    const row = rowStatus(kernel(), shuttingDown);
    expect(outcomeApplies(row, 'free')).toBe(false);
    expect(outcomeApplies(row, 'shutdown')).toBe(true);
    expect(outcomeApplies(rowStatus(kernel(), waiting), 'free')).toBe(true);
    // A failed shutdown leaves the cleanup waiting: its outcome still shows.
    const failed: IRowMessage = { pending: null, tone: 'error', text: 'Shut down failed: 500' };
    expect(outcomeApplies(rowStatus(kernel(), failed), 'free')).toBe(true);
    expect(outcomeApplies(undefined, 'free')).toBe(true);
  });
});

describe('row messages', () => {
  const t0 = 1_000_000;

  it('go when the kernel restarted', () => {
    // "Nothing to free · cpu RSS 472.1 MiB" stayed under the new kernel's RSS 51.6 MiB.
    const row = rowStatus(kernel(), freed, t0);
    expect(keepRowStatus(row, kernel(), t0 + 1000)).toBe(true);
    expect(keepRowStatus(row, kernel({ pid: 5000 }), t0 + 1000)).toBe(false);
    expect(keepRowStatus(row, kernel({ execution_state: 'dead' }), t0 + 1000)).toBe(false);
    expect(keepRowStatus(row, kernel({ execution_state: 'restarting' }), t0 + 1000)).toBe(false);
    expect(keepRowStatus(row, kernel({ execution_state: 'busy' }), t0 + 1000)).toBe(true);
    // A remote kernel (no pid) that restarted: it no longer has the extension.
    const remote = rowStatus(kernel({ pid: null }), freed, t0);
    expect(keepRowStatus(remote, kernel({ pid: null, extension_loaded: false }), t0)).toBe(false);
  });

  it('go when the kernel loaded the extension the hint asks for', () => {
    const hint: IRowMessage = { pending: null, tone: 'hint', text: 'Run "%load_ext …"' };
    const row = rowStatus(kernel({ extension_loaded: false }), hint, t0);
    expect(keepRowStatus(row, kernel({ extension_loaded: false }), t0 + 1000)).toBe(true);
    expect(keepRowStatus(row, kernel({ extension_loaded: true }), t0 + 1000)).toBe(false);
  });

  it('go when a dead kernel came back', () => {
    const dead = kernel({ execution_state: 'dead', extension_loaded: false });
    const hint: IRowMessage = { pending: null, tone: 'hint', text: 'This kernel is dead' };
    const row = rowStatus(dead, hint, t0);
    expect(keepRowStatus(row, dead, t0 + 1000)).toBe(true);
    expect(keepRowStatus(row, kernel({ extension_loaded: false }), t0 + 1000)).toBe(false);
  });

  it('go after a minute, or with their kernel', () => {
    const row = rowStatus(kernel(), freed, t0);
    expect(ROW_MESSAGE_TTL_MS).toBe(60_000);
    expect(keepRowStatus(row, kernel(), t0 + ROW_MESSAGE_TTL_MS - 1)).toBe(true);
    expect(keepRowStatus(row, kernel(), t0 + ROW_MESSAGE_TTL_MS)).toBe(false);
    expect(keepRowStatus(row, undefined, t0)).toBe(false);
  });

  it('stay while their action runs, however long the cell takes', () => {
    const row = rowStatus(kernel({ execution_state: 'busy' }), waiting, t0);
    expect(keepRowStatus(row, kernel({ execution_state: 'busy' }), t0 + 3_600_000)).toBe(true);
    // The restart ends the wait itself, with its own message.
    expect(keepRowStatus(row, kernel({ pid: 5000 }), t0 + 1000)).toBe(true);
    expect(keepRowStatus(row, undefined, t0)).toBe(false);
  });
});
