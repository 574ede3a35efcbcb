// The series viewer: one rendered image at a time (WADO-RS rendered), its
// instances scrolled with the wheel or the keys, one frame of a
// multi-frame at a time, window presets applied by the server.

import * as api from './api.js';

const PRESETS = [
  { name: 'As stored', window: null },
  { name: 'Soft tissue', window: { center: 40, width: 400 } },
  { name: 'Lung', window: { center: -600, width: 1500 } },
  { name: 'Bone', window: { center: 400, width: 1800 } },
  { name: 'Brain', window: { center: 40, width: 80 } },
  { name: 'Liver', window: { center: 60, width: 160 } },
];

let current = null;

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith('on')) { node.addEventListener(name.slice(2), value); }
    else if (value !== null && value !== undefined && value !== false) { node.setAttribute(name, value); }
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Stop listening to the keys (the viewer is not shown). */
export function closeViewer() {
  if (current) {
    document.removeEventListener('keydown', current.keys);
    current = null;
  }
}

/** Show a series in `container`. */
export async function showSeries(container, study, series, picker) {
  closeViewer();
  const [found, about] = await Promise.all([
    api.search(`studies/${study}/series/${series}/instances`,
               { includefield: ['00200013', '00280008'] }),
    api.search(`studies/${study}/series`, { SeriesInstanceUID: series, includefield: '0008103E' }),
  ]);
  const title = about[0]
    ? `${api.value(about[0], '00080060')} ${api.value(about[0], '00200011')}: ${api.value(about[0], '0008103E')}`
    : '';
  const instances = found.map((i) => ({
    uid: api.value(i, '00080018'),
    number: Number(api.value(i, '00200013') || 0),
    frames: Number(api.value(i, '00280008') || 1),
  })).sort((a, b) => a.number - b.number);
  const view = { study, series, instances, index: 0, frame: 1, preset: PRESETS[0] };
  const image = element('img', { id: 'image', alt: 'Rendered image' });
  const overlay = element('div', { class: 'overlay' });
  const slider = element('input', { type: 'range', min: 1, max: Math.max(1, instances.length), value: 1, id: 'instance-slider', 'aria-label': 'Image' });
  const frameSlider = element('input', { type: 'range', min: 1, max: 1, value: 1, id: 'frame-slider', 'aria-label': 'Frame' });
  const frameRow = element('p', {}, 'Frame ', frameSlider);
  const presets = element('select', { id: 'window-preset', 'aria-label': 'Window' },
    ...PRESETS.map((p, n) => element('option', { value: n }, p.window ? `${p.name} (${p.window.center}/${p.window.width})` : p.name)));
  const frame = element('div', { class: 'frame' }, image, overlay);
  container.replaceChildren(
    element('div', { class: 'bar' },
      element('a', { href: `#/study/${study}` }, '← Series of the study'),
      element('h2', { id: 'series-title' }, title),
      element('span', { class: 'spacer' }), ...picker(study, series)),
    element('div', { id: 'viewer' }, frame,
      element('aside', {},
        element('p', {}, 'Image ', slider),
        frameRow,
        element('p', {}, 'Window ', presets),
        element('p', { class: 'muted' }, 'Wheel or ↑ ↓ (Page Up/Down, Home/End): images; ← →: frames of a multi-frame image.'))));

  function url(index, frameNumber) {
    const instance = instances[index];
    const multi = instance.frames > 1;
    return api.renderedUrl(study, series, instance.uid, multi ? frameNumber : null, view.preset.window);
  }

  function show() {
    if (!instances.length) { overlay.textContent = 'No images'; return; }
    const instance = instances[view.index];
    view.frame = Math.min(Math.max(1, view.frame), instance.frames);
    image.src = url(view.index, view.frame);
    slider.value = view.index + 1;
    frameSlider.max = instance.frames;
    frameSlider.value = view.frame;
    frameRow.hidden = instance.frames < 2;
    overlay.textContent = `Image ${view.index + 1} / ${instances.length}`
      + (instance.frames > 1 ? ` · frame ${view.frame} / ${instance.frames}` : '')
      + (view.preset.window ? ` · W ${view.preset.window.width} L ${view.preset.window.center}` : '');
    // The next image, fetched ahead so that scrolling does not wait.
    if (view.index + 1 < instances.length) { new Image().src = url(view.index + 1, 1); }
  }

  function step(images, frames = 0) {
    if (!instances.length) { return; }
    if (frames) {
      view.frame += frames;
    } else {
      view.index = Math.min(Math.max(0, view.index + images), instances.length - 1);
      view.frame = 1;
    }
    show();
  }

  const keys = (event) => {
    if (event.target.closest && event.target.closest('input, select, textarea')) { return; }
    const moves = { ArrowDown: [1, 0], ArrowUp: [-1, 0], PageDown: [10, 0], PageUp: [-10, 0],
                    Home: [-Infinity, 0], End: [Infinity, 0], ArrowRight: [0, 1], ArrowLeft: [0, -1] };
    const move = moves[event.key];
    if (!move) { return; }
    event.preventDefault();
    const [images, frames] = move;
    if (images === Infinity) { view.index = instances.length - 1; view.frame = 1; show(); return; }
    if (images === -Infinity) { view.index = 0; view.frame = 1; show(); return; }
    step(images, frames);
  };
  frame.addEventListener('wheel', (event) => { event.preventDefault(); step(Math.sign(event.deltaY)); },
                         { passive: false });
  slider.addEventListener('input', () => { view.index = Number(slider.value) - 1; view.frame = 1; show(); });
  frameSlider.addEventListener('input', () => { view.frame = Number(frameSlider.value); show(); });
  presets.addEventListener('change', () => { view.preset = PRESETS[Number(presets.value)]; show(); });
  document.addEventListener('keydown', keys);
  current = { keys, view };
  show();
}
