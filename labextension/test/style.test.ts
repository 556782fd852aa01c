import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

/**
 * The declarations base.css gives `selector` (every rule whose selector list names it, later
 * rules winning). No layout in node: these pin the rules whose absence broke the layout in a
 * real browser.
 */
function declarations(selector: string): Record<string, string> {
  const css = readFileSync(new URL('../style/base.css', import.meta.url), 'utf8').replace(
    /\/\*[\s\S]*?\*\//g,
    ''
  );
  const found: Record<string, string> = {};
  for (const [, selectors, body] of css.matchAll(/([^{}]+)\{([^}]*)\}/g)) {
    if (selectors.split(',').some(s => s.trim() === selector)) {
      for (const declaration of body.split(';')) {
        const colon = declaration.indexOf(':');
        if (colon > 0) {
          found[declaration.slice(0, colon).trim()] = declaration.slice(colon + 1).trim();
        }
      }
    }
  }
  return found;
}

describe('row buttons', () => {
  it('keep their label on one line, in their 24 px', () => {
    // A scrollbar narrowed the panel; "Free memory" and "Shut down" wrapped inside their 24 px
    // and drew "memory" and "down" over the next row.
    const button = declarations('.q3j-kernel-actions button');
    expect(button).toMatchObject({
      height: '24px',
      'line-height': '24px',
      'white-space': 'nowrap',
      overflow: 'hidden',
      'text-overflow': 'ellipsis',
      'min-width': '0'
    });
    // Too narrow for both: the second goes to a line of its own.
    expect(declarations('.q3j-kernel-actions')['flex-wrap']).toBe('wrap');
  });

  it('look disabled when they are, the red "Shut down" too', () => {
    const disabled = declarations('.q3j-kernel-actions button:disabled');
    expect(Number(disabled.opacity)).toBeLessThan(1);
    expect(disabled.cursor).toBe('not-allowed');
    // As specific as JupyterLab's button.jp-mod-styled.jp-mod-warn:hover, which is red.
    const warn = declarations('.q3j-kernel-actions button.jp-mod-styled.jp-mod-warn:disabled');
    expect(warn.background).toBeDefined();
  });
});

describe('row names', () => {
  it('cut the folder at its start, so its last folders show', () => {
    // Cut at its end, two notebooks of the same name in run_a/ and run_b/ read the same.
    expect(declarations('.q3j-kernel-folder')).toMatchObject({
      direction: 'rtl',
      'text-align': 'left',
      'text-overflow': 'ellipsis'
    });
    // Inside, the path reads left to right (no slash moved to the other side).
    expect(declarations('.q3j-folder-text')).toMatchObject({
      direction: 'ltr',
      'unicode-bidi': 'isolate'
    });
  });

  it('never shrink the end of a name; the head gives way first, then the tail', () => {
    expect(declarations('.q3j-name-end').flex).toBe('0 0 auto');
    expect(declarations('.q3j-name-rest').flex).toBe('0 0 auto');
    expect(declarations('.q3j-name-head').flex).toBe('0 1 auto');
    expect(declarations('.q3j-name-tail').flex).toBe('0 1 auto');
  });
});
