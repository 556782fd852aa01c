import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

const CSS = readFileSync(new URL('../style/base.css', import.meta.url), 'utf8').replace(
  /\/\*[\s\S]*?\*\//g,
  ''
);

/** base.css split into its top level and the body of each `@media (query)` block. */
function split(css: string): { top: string; media: Map<string, string> } {
  const media = new Map<string, string>();
  let top = '';
  let rest = css;
  for (let at = rest.indexOf('@media'); at !== -1; at = rest.indexOf('@media')) {
    const open = rest.indexOf('{', at);
    let depth = 1;
    let end = open + 1;
    for (; depth > 0; end += 1) {
      depth += rest[end] === '{' ? 1 : rest[end] === '}' ? -1 : 0;
    }
    top += rest.slice(0, at);
    media.set(rest.slice(at + '@media'.length, open).trim(), rest.slice(open + 1, end - 1));
    rest = rest.slice(end);
  }
  return { top: top + rest, media };
}

/**
 * The declarations base.css gives `selector` (every rule whose selector list names it, later
 * rules winning), at its top level or inside `@media (query)`. No layout in node: these pin
 * the rules whose absence broke the layout in a real browser.
 */
function declarations(selector: string, query?: string): Record<string, string> {
  const { top, media } = split(CSS);
  const css = query === undefined ? top : (media.get(query) ?? '');
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
  it('keep their label on one line, at least 24 px high', () => {
    // A scrollbar narrowed the panel; "Free memory" and "Shut down" wrapped inside their 24 px
    // and drew "memory" and "down" over the next row.
    const button = declarations('.q3j-kernel-actions button');
    expect(button).toMatchObject({
      'min-height': '24px',
      'white-space': 'nowrap',
      overflow: 'hidden',
      'text-overflow': 'ellipsis',
      'min-width': '0'
    });
    // At a 200% UI font a fixed 24 px cut the labels: the height follows the font.
    expect(button.height).toBe('auto');
    // Too narrow for both: the second goes to a line of its own.
    expect(declarations('.q3j-kernel-actions')['flex-wrap']).toBe('wrap');
  });

  it('look disabled when they are, the red "Shut down" too', () => {
    // aria-disabled, not disabled: a disabled "Free memory" dropped the focus to <body>.
    const disabled = declarations(".q3j-kernel-actions button[aria-disabled='true']");
    expect(Number(disabled.opacity)).toBeLessThan(1);
    expect(disabled.cursor).toBe('not-allowed');
    // As specific as JupyterLab's button.jp-mod-styled.jp-mod-warn:hover, which is red.
    const warn = declarations(
      ".q3j-kernel-actions button.jp-mod-styled.jp-mod-warn[aria-disabled='true']"
    );
    expect(warn.background).toBeDefined();
    expect(CSS).not.toContain(':disabled');
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

describe('accessibility', () => {
  it("draws text in the theme's font colours, and levels as marks and bars beside it", () => {
    // Warning and error colours as text were under 4.5:1 in the light or the dark theme.
    const colouredText = [...CSS.matchAll(/(?<!-)color:\s*var\(--jp-(warn|error|success)-color/g)];
    expect(colouredText).toEqual([]);
    expect(declarations('.q3j-empty-hint').color).toBeUndefined(); // the panel's font-color1
    expect(declarations('.q3j-state-busy').color).toBe('var(--jp-ui-font-color1)');
    expect(declarations('.q3j-note--warning')['border-left']).toBe(
      '3px solid var(--jp-warn-color0)'
    );
    expect(declarations('.q3j-tone-error')['border-left']).toBe('3px solid var(--q3j-tone-color)');
    for (const level of ['warning', 'critical']) {
      expect(declarations(`.q3j-status[data-level='${level}']::before`).content).toBe("''");
    }
  });

  it('lets a large UI font wrap the figures instead of cutting them', () => {
    // "62.0 / 80.0 GiB (78" was cut at 200%, and the panel scrolled sideways.
    expect(declarations('.q3j-kernel-figures')['flex-wrap']).toBe('wrap');
    expect(declarations('.q3j-kernel-figures')['white-space']).toBeUndefined();
    expect(declarations('.q3j-gauge-value')).toMatchObject({ flex: '1 1 auto', 'min-width': '0' });
    expect(declarations('.q3j-gauge-value')['white-space']).toBeUndefined();
  });

  it('keeps the bars in forced colours, and still under reduced motion', () => {
    const forced = '(forced-colors: active)';
    expect(declarations('.q3j-bar', forced).border).toBe('1px solid CanvasText');
    expect(declarations('.q3j-bar-fill', forced)).toMatchObject({
      'forced-color-adjust': 'none',
      background: 'Highlight'
    });
    expect(declarations('.q3j-bar-fill').transition).toBe('width 0.3s ease');
    expect(declarations('.q3j-bar-fill', '(prefers-reduced-motion: reduce)').transition).toBe(
      'none'
    );
  });
});
