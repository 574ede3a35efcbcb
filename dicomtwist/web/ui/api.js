// The page's only ways out: DICOMweb (QIDO-RS, WADO-RS rendered and
// thumbnails, STOW-RS) and the archive's JSON API at /api, both on this
// page's own origin.  Credentials (HTTP Basic) are the browser's.

let dicomweb = '/dicom-web';

/** `path` on this page's origin, as an absolute URL.  Never relative to
 *  the page's own URL: opened as http://user:password@host/ (a bookmark,
 *  a script), the page's URL carries the credentials, and a URL resolved
 *  against it does too, which `fetch` refuses (and the browser's
 *  authentication cache answers the request without them anyway). */
export function here(path) { return new URL(path, location.origin).href; }

/** Set the DICOMweb service root (from /api/status). */
export function setDicomWebRoot(root) { dicomweb = root.replace(/\/$/, ''); }

/** An HTTP answer that was not a success. */
export class HttpError extends Error {
  constructor(status, text) {
    super(`${status}: ${text}`);
    this.status = status;
  }
}

async function checked(response) {
  if (response.ok) { return response; }
  let text = response.statusText;
  try { text = (await response.json()).error || text; } catch (e) { /* not JSON */ }
  throw new HttpError(response.status, text);
}

async function json(url, options = {}) {
  const headers = { Accept: 'application/json', ...(options.headers || {}) };
  const response = await checked(await fetch(here(url), { ...options, headers }));
  if (response.status === 204) { return null; }
  return response.json();
}

/** GET /api/status: version, counts, disk, associations, destinations. */
export function archiveStatus() { return json('/api/status'); }

/** QIDO-RS: `path` below the root (`studies`, `studies/{uid}/series`...). */
export async function search(path, params = {}, signal = undefined) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== '') { query.append(key, one); }
    }
  }
  const found = await json(`${dicomweb}/${path}?${query}`,
                           { signal, headers: { Accept: 'application/dicom+json' } });
  return found || [];
}

/** The first value of a tag in a DICOM JSON object (a name: its
 *  alphabetic group); '' when absent. */
export function value(object, tag) {
  const element = object && object[tag];
  const first = element && element.Value && element.Value[0];
  if (first === undefined || first === null) { return ''; }
  if (typeof first === 'object') { return first.Alphabetic || first.Ideographic || ''; }
  return first;
}

/** Every value of a tag, as text. */
export function values(object, tag) {
  const element = object && object[tag];
  return element && element.Value ? element.Value.map(String) : [];
}

/** WADO-RS thumbnail of a series (or a study). */
export function thumbnailUrl(study, series = null) {
  const path = series ? `studies/${study}/series/${series}` : `studies/${study}`;
  return here(`${dicomweb}/${path}/thumbnail?viewport=192,192`);
}

/** WADO-RS rendered instance (one frame of a multi-frame), windowed. */
export function renderedUrl(study, series, instance, frame = null, window = null) {
  let url = `${dicomweb}/studies/${study}/series/${series}/instances/${instance}`;
  url += frame ? `/frames/${frame}/rendered` : '/rendered';
  return here(window ? `${url}?window=${window.center},${window.width},linear` : url);
}

/** STOW-RS: store files, `batch` per request (a multipart/related body
 *  built from the File objects, never read into memory).
 *  `progress(done, total)` after each request.
 *  Returns {stored, failed, errors}. */
export async function store(files, progress = () => {}, batch = 20) {
  const result = { stored: 0, failed: 0, errors: [] };
  for (let start = 0; start < files.length; start += batch) {
    const chunk = files.slice(start, start + batch);
    const boundary = `dicomtwist-${crypto.randomUUID()}`;
    const parts = [];
    for (const file of chunk) {
      parts.push(`--${boundary}\r\nContent-Type: application/dicom\r\n\r\n`, file, '\r\n');
    }
    parts.push(`--${boundary}--\r\n`);
    const response = await fetch(here(`${dicomweb}/studies`), {
      method: 'POST',
      headers: {
        'Content-Type': `multipart/related; type="application/dicom"; boundary=${boundary}`,
        Accept: 'application/dicom+json',
      },
      body: new Blob(parts),
    });
    let answer = null;
    try { answer = await response.json(); } catch (e) { /* no body */ }
    if (!response.ok && !(answer && (answer['00081199'] || answer['00081198']))) {
      result.failed += chunk.length;
      result.errors.push((answer && answer.error) || `HTTP ${response.status}`);
    } else {
      const stored = (answer['00081199'] || {}).Value || [];
      const failed = (answer['00081198'] || {}).Value || [];
      result.stored += stored.length;
      result.failed += failed.length;
      if (failed.length) { result.errors.push(`${failed.length} refused (HTTP ${response.status})`); }
    }
    progress(Math.min(start + batch, files.length), files.length);
  }
  return result;
}

/** Send a study (or a series) to a configured destination; `onEvent(job)`
 *  on each progress event (server-sent events on the POST's own answer).
 *  Resolves with the finished job. */
export async function send(study, series, destination, onEvent) {
  const path = series ? `studies/${study}/series/${series}` : `studies/${study}`;
  const url = `/api/${path}/send?destination=${encodeURIComponent(destination)}`;
  const response = await checked(await fetch(here(url), {
    method: 'POST', headers: { Accept: 'text/event-stream' },
  }));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let last = null;
  for (;;) {
    const { value: chunk, done } = await reader.read();
    if (done) { break; }
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter(l => l.startsWith('data:'))
        .map(l => l.slice(5).trim()).join('\n');
      if (data) { last = JSON.parse(data); onEvent(last); }
    }
  }
  return last;
}

/** Cancel a running send. */
export function cancelJob(id) { return json(`/api/jobs/${id}`, { method: 'DELETE' }); }

/** Delete a study: its index rows, then its files. */
export function deleteStudy(study) { return json(`/api/studies/${study}`, { method: 'DELETE' }); }
