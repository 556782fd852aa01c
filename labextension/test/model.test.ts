import { ServerConnection } from '@jupyterlab/services';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';

import {
  DEFAULT_OPTIONS,
  MAX_INTERVAL,
  MIN_INTERVAL,
  MetricsModel,
  readOptions
} from '../src/model';

const serverSettings = ServerConnection.makeSettings({ baseUrl: 'http://lab.test/' });

/** Settings as the registry gives them: each key's composite value. */
function settings(values: Record<string, unknown>): Parameters<typeof readOptions>[0] {
  return { get: (key: string) => ({ composite: values[key], user: values[key] }) } as Parameters<
    typeof readOptions
  >[0];
}

describe('refresh intervals', () => {
  let model: MetricsModel | null = null;

  afterEach(() => {
    model?.dispose();
    model = null;
  });

  it('accept intervals over a minute (setOptions used to throw above 60 s)', () => {
    model = new MetricsModel(serverSettings);
    const options = { ...DEFAULT_OPTIONS, pollInterval: 90_000, backgroundInterval: 120_000 };
    expect(() => model!.setOptions(options)).not.toThrow();
    expect(model.frequency.interval).toBe(120_000);
    expect(model.frequency.max).toBeGreaterThanOrEqual(120_000);
    model.panelVisible = true;
    expect(model.frequency.interval).toBe(90_000);
    expect(model.frequency.max).toBeGreaterThanOrEqual(90_000);
  });

  it('keep backing off up to a minute after errors at short intervals', () => {
    model = new MetricsModel(serverSettings);
    model.setOptions(DEFAULT_OPTIONS);
    expect(model.frequency).toEqual({ interval: 5000, backoff: true, max: 60_000 });
  });

  it('are clamped to the range of the settings schema', () => {
    expect(readOptions(settings({ pollInterval: 10, backgroundInterval: 10_000_000 }))).toEqual(
      expect.objectContaining({ pollInterval: MIN_INTERVAL, backgroundInterval: MAX_INTERVAL })
    );
    expect(readOptions(settings({ pollInterval: 90_000, backgroundInterval: 0 }))).toEqual(
      expect.objectContaining({ pollInterval: 90_000, backgroundInterval: 0 })
    );
    expect(readOptions(settings({ pollInterval: -1, backgroundInterval: 'often' }))).toEqual(
      expect.objectContaining({
        pollInterval: DEFAULT_OPTIONS.pollInterval,
        backgroundInterval: DEFAULT_OPTIONS.backgroundInterval
      })
    );
    expect(readOptions(null)).toBe(DEFAULT_OPTIONS);
  });

  it('have the bounds the settings schema states', () => {
    const schema = JSON.parse(
      readFileSync(new URL('../schema/plugin.json', import.meta.url), 'utf8')
    );
    const { pollInterval, backgroundInterval } = schema.properties;
    expect(pollInterval.minimum).toBe(MIN_INTERVAL);
    expect(pollInterval.maximum).toBe(MAX_INTERVAL);
    expect(backgroundInterval.minimum).toBe(0);
    expect(backgroundInterval.maximum).toBe(MAX_INTERVAL);
  });
});
