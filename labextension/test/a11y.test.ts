import { describe, expect, it } from 'vitest';

import { kernel } from './kernels';

import {
  levelWord,
  meterAria,
  sparklineSummary,
  statusBarLabel,
  statusBarState
} from '../src/format';
import { rowAnnouncement, rowButtonLabels } from '../src/rows';

const GiB = 1024 ** 3;

describe('levels in words', () => {
  it('name warning and critical, and say nothing of the rest', () => {
    expect(levelWord('warning')).toBe('high');
    expect(levelWord('critical')).toBe('critical');
    expect(levelWord('ok')).toBe('');
    expect(levelWord('unknown')).toBe('');
  });
});

describe('a gauge meter', () => {
  it('reads in percent, with the figures on show and the level as text', () => {
    // It was aria-valuenow="66571993088" against a max in bytes, and no aria-valuetext.
    expect(meterAria(62 * GiB, 80 * GiB)).toEqual({
      'aria-valuemin': 0,
      'aria-valuemax': 100,
      'aria-valuenow': 78,
      'aria-valuetext': '62.0 of 80.0 GiB, 78%, high'
    });
    expect(meterAria(76 * GiB, 80 * GiB)['aria-valuetext']).toBe('76.0 of 80.0 GiB, 95%, critical');
    expect(meterAria(1.5 * GiB, 23.5 * GiB)['aria-valuetext']).toBe('1.5 of 23.5 GiB, 6%');
  });

  it('follows the configured thresholds, and says when the total is unknown', () => {
    const low = { warning: 0.05, critical: 0.5 };
    expect(meterAria(1.5 * GiB, 23.5 * GiB, low)['aria-valuetext']).toBe(
      '1.5 of 23.5 GiB, 6%, high'
    );
    expect(meterAria(GiB, null)).toMatchObject({
      'aria-valuenow': 0,
      'aria-valuetext': '1.0 GiB, total unknown'
    });
  });
});

describe('a sparkline', () => {
  it('is summarised as its trend over its span', () => {
    const span = [0, 60, 120];
    expect(sparklineSummary([58 * GiB, 60 * GiB, 62 * GiB], 80 * GiB, span)).toBe(
      'Last 2 min: rising, from 58.0 GiB to 62.0 GiB'
    );
    expect(sparklineSummary([62 * GiB, null, 40 * GiB], 80 * GiB, span)).toBe(
      'Last 2 min: falling, from 62.0 GiB to 40.0 GiB'
    );
    // Less than 1% of the total: steady.
    expect(sparklineSummary([62 * GiB, 62.5 * GiB], 80 * GiB, [0, 30])).toBe(
      'Last 30 s: steady at 62.5 GiB'
    );
    expect(sparklineSummary([null, 62 * GiB], 80 * GiB, [0, 30])).toBe('');
  });
});

describe('the status-bar item', () => {
  it('says its level in its accessible name, which it shows as a coloured mark', () => {
    const state = { text: 'GPU 76.0 / 80.0 GiB', level: 'critical' as const, title: 'GPU memory' };
    expect(statusBarLabel(state)).toBe('GPU memory GPU 76.0 / 80.0 GiB (critical)');
    expect(statusBarLabel({ ...state, level: 'ok' })).toBe('GPU memory GPU 76.0 / 80.0 GiB');
    const waiting = statusBarState(null, null);
    expect(statusBarLabel(waiting)).toBe(`${waiting.title} GPU: …`);
  });
});

describe('row buttons for assistive technology', () => {
  it('name the notebook they act on', () => {
    // Every row's buttons were "Free memory" and "Shut down", whatever their notebook.
    expect(rowButtonLabels(kernel({ notebook_path: 'runs/train.ipynb' }))).toEqual({
      free: 'Free memory of runs/train.ipynb',
      shutdown: 'Shut down runs/train.ipynb'
    });
    const console = kernel({ notebook_path: null, console_name: 'Console 1' });
    expect(rowButtonLabels(console).free).toBe('Free memory of Console 1');
  });

  it('announce what a row says, naming its notebook', () => {
    const freed = { pending: null, tone: 'success' as const, text: 'Freed 1.4 MiB' };
    expect(rowAnnouncement(kernel({ notebook_path: 'runs/train.ipynb' }), freed)).toBe(
      'runs/train.ipynb: Freed 1.4 MiB'
    );
  });
});
