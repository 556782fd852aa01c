/**
 * Keyboard behaviour for elements that act as buttons without being <button>s.
 *
 * No JupyterLab or Lumino import, so node-side tests can load it without a DOM.
 */

/** The part of a DOM element `makeButton` uses (an interface, so node-side tests can fake it). */
export interface IButtonLike {
  setAttribute(name: string, value: string): void;
  addEventListener(type: string, listener: (event: Event) => void): void;
}

/**
 * Let a plain element act as a button: focusable with Tab, and Enter or Space do what a click
 * does. (The status bar's items are plain divs; a native <button> would need restyling.)
 */
export function makeButton(node: IButtonLike, onActivate: () => void): void {
  node.setAttribute('role', 'button');
  node.setAttribute('tabindex', '0');
  node.addEventListener('click', () => onActivate());
  node.addEventListener('keydown', event => {
    const { key, repeat } = event as KeyboardEvent;
    if (key !== 'Enter' && key !== ' ' && key !== 'Spacebar') {
      return;
    }
    event.preventDefault(); // Space would scroll the page.
    if (!repeat) {
      onActivate();
    }
  });
}
