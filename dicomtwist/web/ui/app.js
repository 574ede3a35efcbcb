// The archive's web page: search, study, series viewer, send, upload,
// delete, status.  Plain JavaScript modules, no build step.

import * as api from './api.js';
import { showSeries, closeViewer } from './viewer.js';

const TAGS = {
  PatientName: '00100010', PatientID: '00100020', StudyDate: '00080020',
  StudyTime: '00080030', AccessionNumber: '00080050', ModalitiesInStudy: '00080061',
  StudyDescription: '00081030', StudyInstanceUID: '0020000D',
  NumberOfStudyRelatedSeries: '00201206', NumberOfStudyRelatedInstances: '00201208',
  SeriesInstanceUID: '0020000E', Modality: '00080060', SeriesNumber: '00200011',
  SeriesDescription: '0008103E', NumberOfSeriesRelatedInstances: '00201209',
};
const NUMERIC = new Set(['NumberOfStudyRelatedSeries', 'NumberOfStudyRelatedInstances']);
// Series that hold no image: no thumbnail is asked for them.
const NOT_IMAGES = new Set(['SR', 'KO', 'PR', 'DOC', 'RTPLAN', 'RTSTRUCT', 'RTRECORD',
                            'REG', 'FID', 'AU', 'ECG', 'HD', 'PLAN']);

const $ = (selector, root = document) => root.querySelector(selector);
const state = {
  status: null, offset: 0, pageSize: 50, sort: { key: 'StudyDate', descending: true },
  rows: [], more: false, searching: null, timer: null,
};

// -- small helpers ----------------------------------------------------------
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

export function toast(text, error = false) {
  const box = $('#toast');
  box.textContent = text;
  box.className = error ? 'error' : '';
  box.hidden = false;
  clearTimeout(box.timer);
  box.timer = setTimeout(() => { box.hidden = true; }, error ? 8000 : 4000);
}

function fail(error) {
  if (error && error.name === 'AbortError') { return; }
  toast(String(error && error.message ? error.message : error), true);
}

const dateText = (da) => (da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da || '');
const nameText = (pn) => String(pn || '').replace(/\^+$/, '').replace(/\^/g, ', ');
const may = (permission) => !state.status || state.status.permissions.includes(permission);

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// -- status -------------------------------------------------------------------
async function refreshStatus() {
  const status = await api.archiveStatus();
  state.status = status;
  api.setDicomWebRoot(status.dicomweb);
  $('#archive-name').textContent = status.ae_title;
  const c = status.counts;
  $('#summary').textContent = `${c.patients} patients · ${c.studies} studies · ${c.instances} instances`;
  $('#upload-label').hidden = !may('store');
  const d = status.disk;
  const used = d.total ? Math.round(100 * d.used / d.total) : 0;
  const panel = $('#status-panel');
  panel.replaceChildren(element('dl', {},
    element('dt', {}, 'Version'), element('dd', {}, `dicomtwist ${status.version}`),
    element('dt', {}, 'AE title'), element('dd', {}, status.ae_title),
    element('dt', {}, 'Patients / studies / series / instances'),
    element('dd', { id: 'status-counts' }, `${c.patients} / ${c.studies} / ${c.series} / ${c.instances}`),
    element('dt', {}, 'Disk'),
    element('dd', {}, element('span', { class: 'meter' }, element('span', { style: `width:${used}%` })),
            ` ${bytes(d.used)} used of ${bytes(d.total)}, ${bytes(d.free)} free`),
    element('dt', {}, 'Active associations'),
    element('dd', { id: 'status-associations' }, status.associations ?? 'unknown'),
    element('dt', {}, 'Destinations'),
    element('dd', {}, status.destinations.join(', ') || 'none configured'),
    element('dt', {}, 'Signed in as'),
    element('dd', {}, `${status.user || 'anyone (no authentication)'}: ${status.permissions.join(', ')}`),
  ));
  return status;
}

function toggleStatus() {
  const panel = $('#status-panel');
  panel.hidden = !panel.hidden;
  $('#status-button').setAttribute('aria-expanded', String(!panel.hidden));
  if (!panel.hidden) { refreshStatus().catch(fail); }
}

// -- search -------------------------------------------------------------------
function criteria() {
  const form = $('#search');
  const get = (name) => form.elements[name].value.trim();
  const wild = (text) => (text && !/[*?]/.test(text) ? `${text}*` : text);
  const params = {
    PatientName: wild(get('PatientName')),
    PatientID: wild(get('PatientID')),
    AccessionNumber: wild(get('AccessionNumber')),
    StudyDescription: get('StudyDescription') && !/[*?]/.test(get('StudyDescription'))
      ? `*${get('StudyDescription')}*` : get('StudyDescription'),
    ModalitiesInStudy: get('ModalitiesInStudy').toUpperCase(),
  };
  const from = get('from').replace(/-/g, '');
  const to = get('to').replace(/-/g, '');
  if (from || to) { params.StudyDate = from === to ? from : `${from}-${to}`; }
  return params;
}

async function runSearch() {
  if (state.searching) { state.searching.abort(); }
  const controller = new AbortController();
  state.searching = controller;
  const params = {
    ...criteria(),
    includefield: ['00081030', '00201206', '00201208', '00080061'],
    limit: state.pageSize + 1, offset: state.offset, fuzzymatching: 'false',
  };
  try {
    const found = await api.search('studies', params, controller.signal);
    if (controller !== state.searching) { return; }
    state.more = found.length > state.pageSize;
    state.rows = found.slice(0, state.pageSize);
    showRows();
  } catch (error) {
    fail(error);
  }
}

function searchSoon(resetOffset = true) {
  if (resetOffset) { state.offset = 0; }
  clearTimeout(state.timer);
  state.timer = setTimeout(runSearch, 200);
}

function sortValue(row, key) {
  const v = api.value(row, TAGS[key]);
  return NUMERIC.has(key) ? Number(v || 0) : String(v).toLowerCase();
}

function showRows() {
  const { key, descending } = state.sort;
  const rows = [...state.rows].sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
  });
  for (const th of document.querySelectorAll('#studies th')) {
    th.setAttribute('aria-sort', th.dataset.key === key ? (descending ? 'descending' : 'ascending') : 'none');
  }
  $('#studies tbody').replaceChildren(...rows.map((row) => {
    const study = api.value(row, TAGS.StudyInstanceUID);
    const pid = api.value(row, TAGS.PatientID);
    return element('tr', { 'data-study': study, onclick: () => { location.hash = `#/study/${study}`; } },
      element('td', {}, nameText(api.value(row, TAGS.PatientName))),
      element('td', {}, element('a', {
        class: 'patient', href: '#/', title: 'All studies of this patient',
        onclick: (event) => {
          event.preventDefault(); event.stopPropagation();
          $('#search').reset(); $('#search').elements.PatientID.value = pid; searchSoon();
        } }, pid)),
      element('td', {}, dateText(api.value(row, TAGS.StudyDate))),
      element('td', {}, api.values(row, TAGS.ModalitiesInStudy).join(', ')),
      element('td', {}, api.value(row, TAGS.StudyDescription)),
      element('td', {}, api.value(row, TAGS.AccessionNumber)),
      element('td', { class: 'number' }, api.value(row, TAGS.NumberOfStudyRelatedSeries)),
      element('td', { class: 'number' }, api.value(row, TAGS.NumberOfStudyRelatedInstances)));
  }));
  const first = state.rows.length ? state.offset + 1 : 0;
  $('#page-info').textContent = state.rows.length
    ? `studies ${first}–${state.offset + state.rows.length}` : 'no study matches';
  $('#previous').disabled = state.offset === 0;
  $('#next').disabled = !state.more;
}

// -- jobs (sends) ---------------------------------------------------------------
function jobLine(job) {
  let line = document.getElementById(`job-${job.id}`);
  if (!line) {
    line = element('div', { class: 'job', id: `job-${job.id}` });
    $('#jobs').prepend(line);
  }
  const total = job.total ?? 0;
  const done = job.completed + job.failed + job.warning;
  const cancel = element('button', { type: 'button', onclick: () => api.cancelJob(job.id).catch(fail) }, 'Cancel');
  const close = element('button', { type: 'button', onclick: () => line.remove() }, 'Dismiss');
  line.className = `job ${job.state}`;
  line.replaceChildren(
    element('span', {}, `Send ${job.series ? 'series' : 'study'} to ${job.destination}`),
    element('progress', { max: Math.max(total, 1), value: done }),
    element('span', { class: 'count' }, `${done} / ${total}`),
    element('span', { class: 'state' }, job.state + (job.failed ? ` (${job.failed} failed)` : '')
      + (job.error ? `: ${job.error}` : '')),
    job.state === 'running' ? cancel : close);
}

async function sendTo(study, series, destination) {
  try {
    const job = await api.send(study, series, destination, jobLine);
    if (job) { toast(`Sent ${job.completed} of ${job.total} to ${job.destination}: ${job.state}`, job.state !== 'done'); }
  } catch (error) { fail(error); }
}

function destinationPicker(study, series) {
  const destinations = state.status ? state.status.destinations : [];
  if (!destinations.length || !may('send')) { return []; }
  const select = element('select', { class: 'destination', 'aria-label': 'Destination' },
    ...destinations.map((name) => element('option', { value: name }, name)));
  const button = element('button', {
    type: 'button', class: 'send',
    onclick: (event) => { event.stopPropagation(); sendTo(study, series, select.value); },
  }, series ? 'Send series' : 'Send study');
  select.addEventListener('click', (event) => event.stopPropagation());
  return [select, button];
}

// -- a study --------------------------------------------------------------------
async function showStudy(study) {
  const view = $('#study-view');
  const [studies, series] = await Promise.all([
    api.search('studies', { StudyInstanceUID: study, includefield: ['00081030', '00201208'] }),
    api.search(`studies/${study}/series`, { includefield: ['0008103E', '00201209'] }),
  ]);
  const about = studies[0];
  if (!about) { toast('That study is no longer in the archive', true); location.hash = '#/'; return; }
  series.sort((a, b) => Number(api.value(a, TAGS.SeriesNumber) || 0) - Number(api.value(b, TAGS.SeriesNumber) || 0));
  const remove = may('delete') ? element('button', {
    type: 'button', class: 'danger', id: 'delete-study', onclick: () => confirmDelete(study, about),
  }, 'Delete study') : '';
  view.replaceChildren(
    element('div', { class: 'bar' },
      element('a', { href: '#/' }, '← Studies'),
      element('h2', {}, `${nameText(api.value(about, TAGS.PatientName))} (${api.value(about, TAGS.PatientID)})`),
      element('span', {}, `${dateText(api.value(about, TAGS.StudyDate))} · ${api.value(about, TAGS.StudyDescription)} · accession ${api.value(about, TAGS.AccessionNumber) || '—'}`),
      element('span', { class: 'spacer' }),
      ...destinationPicker(study, null), remove),
    element('div', { class: 'grid' }, ...series.map((s) => {
      const uid = api.value(s, TAGS.SeriesInstanceUID);
      const modality = api.value(s, TAGS.Modality);
      // Images (thumbnails, the viewer) are retrieves: a user who may only
      // query sees the series without them.
      const viewable = may('retrieve');
      let picture;
      if (!viewable) {
        picture = element('div', { class: 'noimage' }, 'no permission to view images');
      } else if (NOT_IMAGES.has(modality)) {
        picture = element('div', { class: 'noimage' }, modality || 'no image');
      } else {
        picture = element('img', { src: api.thumbnailUrl(study, uid), alt: `Series ${api.value(s, TAGS.SeriesNumber)}`, loading: 'lazy' });
      }
      const open = viewable ? { onclick: () => { location.hash = `#/study/${study}/series/${uid}`; } } : {};
      return element('div', {
        class: viewable ? 'card' : 'card locked', 'data-series': uid, ...open,
      }, picture,
      element('div', { class: 'title' }, `${modality} ${api.value(s, TAGS.SeriesNumber)}: ${api.value(s, TAGS.SeriesDescription)}`),
      element('div', { class: 'muted' }, `${api.value(s, TAGS.NumberOfSeriesRelatedInstances)} images`),
      element('div', {}, ...destinationPicker(study, uid)));
    })));
}

function confirmDelete(study, about) {
  const dialog = $('#confirm');
  $('#confirm-text').textContent = `Delete the study of ${nameText(api.value(about, TAGS.PatientName))}`
    + ` from ${dateText(api.value(about, TAGS.StudyDate))} (${api.value(about, TAGS.NumberOfStudyRelatedInstances)} images)?`
    + ' Its files are removed from the archive for good.';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') { return; }
    try {
      const done = await api.deleteStudy(study);
      toast(`Deleted the study: ${done.instances} instances`);
      location.hash = '#/';
      refreshStatus().catch(fail);
      searchSoon(false);
    } catch (error) { fail(error); }
  };
  dialog.returnValue = '';
  dialog.showModal();
}

// -- upload ---------------------------------------------------------------------
async function upload(event) {
  const files = [...event.target.files];
  event.target.value = '';
  if (!files.length) { return; }
  toast(`Uploading ${files.length} file(s)…`);
  try {
    const result = await api.store(files, (done, total) => toast(`Uploading: ${done} / ${total}`));
    toast(`Stored ${result.stored} of ${files.length} file(s)`
          + (result.errors.length ? `; ${result.errors.join('; ')}` : ''), result.failed > 0);
    refreshStatus().catch(fail);
    searchSoon(false);
  } catch (error) { fail(error); }
}

// -- routing ----------------------------------------------------------------------
async function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  const views = { search: $('#search-view'), study: $('#study-view'), series: $('#series-view') };
  let shown = 'search';
  if (parts[0] === 'study' && parts[1]) { shown = parts[2] === 'series' && parts[3] ? 'series' : 'study'; }
  if (shown === 'series' && !may('retrieve')) {
    // The viewer retrieves images: the study, with a word why.
    toast('Viewing images needs the retrieve permission', true);
    shown = 'study';
  }
  for (const [name, view] of Object.entries(views)) { view.hidden = name !== shown; }
  if (shown !== 'series') { closeViewer(); }
  try {
    if (shown === 'study') { await showStudy(parts[1]); }
    if (shown === 'series') { await showSeries($('#series-view'), parts[1], parts[3], destinationPicker); }
  } catch (error) { fail(error); }
  document.body.dataset.view = shown;
}

async function start() {
  const form = $('#search');
  form.addEventListener('submit', (event) => event.preventDefault());
  form.addEventListener('input', () => searchSoon());
  // Enter in a search field opens the first study listed; '/' anywhere
  // else goes to the patient name field.
  form.addEventListener('keydown', (event) => {
    const first = $('#studies tbody tr');
    if (event.key === 'Enter' && first) { location.hash = `#/study/${first.dataset.study}`; }
  });
  document.addEventListener('keydown', (event) => {
    if (event.key !== '/' || event.target.closest('input, select, textarea')) { return; }
    event.preventDefault();
    location.hash = '#/';
    form.elements.PatientName.focus();
  });
  form.addEventListener('reset', () => setTimeout(() => searchSoon(), 0));
  for (const th of document.querySelectorAll('#studies th')) {
    th.addEventListener('click', () => {
      const key = th.dataset.key;
      state.sort = { key, descending: state.sort.key === key ? !state.sort.descending : false };
      showRows();
    });
  }
  $('#previous').addEventListener('click', () => { state.offset = Math.max(0, state.offset - state.pageSize); runSearch(); });
  $('#next').addEventListener('click', () => { state.offset += state.pageSize; runSearch(); });
  $('#page-size').addEventListener('change', (e) => { state.pageSize = Number(e.target.value); searchSoon(); });
  $('#status-button').addEventListener('click', toggleStatus);
  $('#upload').addEventListener('change', upload);
  window.addEventListener('hashchange', route);
  try { await refreshStatus(); } catch (error) { fail(error); }
  await runSearch();
  await route();
  document.body.dataset.ready = 'true';
}

start();
