// The server's HTTP API as the page uses it: the API key (asked once, kept in this browser), JSON requests,
// and streamed chat completions (server-sent events).

const KEY_ITEM = 'deeproots.apiKey';
let askForKey = async () => null;  // set by the page: resolves to a key, or null when the user gives up

export class ApiError extends Error {}

export function onKeyNeeded(ask) {
  askForKey = ask;
}

async function send(path, { method = 'GET', body, signal } = {}) {
  for (;;) {
    const headers = {};
    const key = localStorage.getItem(KEY_ITEM);
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const json = body === undefined ? undefined : JSON.stringify(body);
    const response = await fetch(path, { method, headers, signal, body: json });
    if (response.status !== 401) return response;
    const fresh = await askForKey(Boolean(key));
    if (!fresh) throw new ApiError('this server needs an API key');
    localStorage.setItem(KEY_ITEM, fresh);
  }
}

async function failure(response) {
  try {
    return new ApiError((await response.json()).error.message);
  } catch {
    return new ApiError(`${response.status} ${response.statusText}`);
  }
}

// JSON in, JSON out (null for 204); a non-2xx answer throws ApiError with the server's message.
export async function call(path, options) {
  const response = await send(path, options);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// POST /v1/chat/completions with stream=true; onText(piece) for each piece of the answer.
// Resolves to the usage the server reports; an AbortError when `signal` stops it.
export async function streamChat(body, signal, onText) {
  const response = await send('/v1/chat/completions', {
    method: 'POST', signal, body: { ...body, stream: true, stream_options: { include_usage: true } },
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return usage;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const data = buffer.slice(0, end).split('\n').filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).trim()).join('');
      buffer = buffer.slice(end + 2);
      if (!data || data === '[DONE]') continue;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(event.error.message);
      if (event.usage) usage = event.usage;
      const text = event.choices?.[0]?.delta?.content;
      if (text) onText(text);
    }
  }
}
