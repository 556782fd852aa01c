/**
 * What a notebook's row says under its buttons ("Freeing…", "Freed 1.2 GiB", a hint), which
 * of its buttons work meanwhile, and when the message goes.
 *
 * Nothing here touches the DOM, so the rules are unit-tested on their own; panel.tsx keeps the
 * messages in a map by kernel id and applies them.
 */

import { kernelLabel } from './format';
import type { IKernelMetrics } from './metrics';

/** How long a result ("Freed …", a hint, an error) stays under its row. */
export const ROW_MESSAGE_TTL_MS = 60_000;

export type RowAction = 'free' | 'shutdown';

/** The states a restarting kernel passes through (the server's `execution_state`). */
const RESTARTING = ['starting', 'restarting', 'autorestarting'];

export interface IRowMessage {
  /** The action under way on the row, or null: the message is a result (or a hint). */
  pending: RowAction | null;
  tone: 'info' | 'success' | 'error' | 'hint';
  text: string;
  /** Secondary line, e.g. the cleanup's one-line summary. */
  detail?: string;
}

/** The kernel as it was when its message was set: the message is about that kernel. */
export interface IKernelSubject {
  pid: number | null;
  extension_loaded: boolean;
  execution_state: string;
}

export interface IRowStatus extends IRowMessage {
  subject: IKernelSubject;
  /** When the message was set, in ms (Date.now()). */
  since: number;
}

export function rowStatus(
  kernel: IKernelMetrics,
  message: IRowMessage,
  now: number = Date.now()
): IRowStatus {
  const { pid, extension_loaded, execution_state } = kernel;
  return { ...message, subject: { pid, extension_loaded, execution_state }, since: now };
}

/**
 * Which buttons of a row are disabled. "Free memory" while anything runs on the row; "Shut
 * down" only while a shutdown does: it is the way out of a cleanup that waits for a runaway
 * cell, however long that cell runs. The panel marks them aria-disabled and ignores their
 * clicks, rather than setting `disabled`: a disabled button loses the keyboard focus to <body>.
 */
export function rowButtons(status: IRowStatus | undefined): {
  freeDisabled: boolean;
  shutdownDisabled: boolean;
} {
  const pending = status?.pending ?? null;
  return { freeDisabled: pending !== null, shutdownDisabled: pending === 'shutdown' };
}

/**
 * Whether the outcome of `action` may replace the row's `current` message: not while another
 * action runs there (a shutdown clicked during a cleanup's wait ends that wait with "the
 * kernel stopped", which would replace "Shutting down…" and enable the buttons again).
 */
export function outcomeApplies(current: IRowStatus | undefined, action: RowAction): boolean {
  return !current?.pending || current.pending === action;
}

/** Whether `kernel` is no longer the one `subject` describes, or has changed what a message
 * about it said: restarted (another pid, dead or restarting since), or loaded the extension. */
export function kernelChanged(subject: IKernelSubject, kernel: IKernelMetrics): boolean {
  const dead = (state: string): boolean => state === 'dead';
  const restarting = (state: string): boolean => RESTARTING.includes(state);
  return (
    (subject.pid !== null && kernel.pid !== null && subject.pid !== kernel.pid) ||
    subject.extension_loaded !== kernel.extension_loaded ||
    dead(subject.execution_state) !== dead(kernel.execution_state) ||
    (restarting(kernel.execution_state) && !restarting(subject.execution_state))
  );
}

/**
 * Whether a row keeps its message in a new reading, where `kernel` is the row's kernel (or
 * undefined: gone). An action under way keeps it until it ends; a result goes after
 * ROW_MESSAGE_TTL_MS, or as soon as what it was about changed (see `kernelChanged`): the hint
 * to load the extension once it is loaded, "Freed …" of the kernel before a restart.
 */
export function keepRowStatus(
  status: IRowStatus,
  kernel: IKernelMetrics | undefined,
  now: number = Date.now()
): boolean {
  if (!kernel) {
    return false;
  }
  if (status.pending) {
    return true;
  }
  return now - status.since < ROW_MESSAGE_TTL_MS && !kernelChanged(status.subject, kernel);
}

/** The notebook a row is about, as its buttons' names and its announcements say it: the path
 * (two notebooks of the same name in two folders read apart), or the console's name. */
function rowSubject(kernel: IKernelMetrics): string {
  return kernel.notebook_path || kernelLabel(kernel);
}

/**
 * The accessible names of a row's buttons: the visible label and the notebook, so that a
 * screen reader's list of buttons does not read "Free memory" once per notebook.
 */
export function rowButtonLabels(kernel: IKernelMetrics): { free: string; shutdown: string } {
  const subject = rowSubject(kernel);
  return { free: `Free memory of ${subject}`, shutdown: `Shut down ${subject}` };
}

/** What the panel's live region says when a row's message changes: "train.ipynb: Freed 1.4 MiB". */
export function rowAnnouncement(kernel: IKernelMetrics, message: IRowMessage): string {
  return `${rowSubject(kernel)}: ${message.text}`;
}
