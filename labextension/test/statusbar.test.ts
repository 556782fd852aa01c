import { describe, expect, it, vi } from 'vitest';

import { makeButton } from '../src/button';

/** Enough of an element for `makeButton`: attributes and events (node has no DOM). */
class FakeNode extends EventTarget {
  readonly attributes = new Map<string, string>();

  setAttribute(name: string, value: string): void {
    this.attributes.set(name, value);
  }
}

function key(name: string, repeat = false): Event {
  return Object.assign(new Event('keydown', { cancelable: true }), { key: name, repeat });
}

describe('status bar item', () => {
  it('is a focusable button', () => {
    const node = new FakeNode();
    makeButton(node, () => undefined);
    expect(node.attributes.get('role')).toBe('button');
    expect(node.attributes.get('tabindex')).toBe('0');
  });

  it('opens the sidebar on click, Enter and Space', () => {
    const node = new FakeNode();
    const open = vi.fn();
    makeButton(node, open);
    node.dispatchEvent(new Event('click'));
    expect(open).toHaveBeenCalledTimes(1);
    const enter = key('Enter');
    node.dispatchEvent(enter);
    expect(open).toHaveBeenCalledTimes(2);
    expect(enter.defaultPrevented).toBe(true);
    const space = key(' ');
    node.dispatchEvent(space);
    expect(open).toHaveBeenCalledTimes(3);
    expect(space.defaultPrevented).toBe(true); // no page scroll
  });

  it('ignores other keys and key repeat', () => {
    const node = new FakeNode();
    const open = vi.fn();
    makeButton(node, open);
    const tab = key('Tab');
    node.dispatchEvent(tab);
    expect(tab.defaultPrevented).toBe(false);
    node.dispatchEvent(key('a'));
    node.dispatchEvent(key('Enter', true));
    expect(open).not.toHaveBeenCalled();
  });
});
