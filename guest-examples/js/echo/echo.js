// The echo handler in JavaScript: replies with exactly what reached it, as the Rust echo does.
//
// The reply is a JSON object with keys in sorted order: `data` (the data as a string when it is
// UTF-8) or `data_base64` (standard base64 otherwise), `datacontenttype`, `extensions` (an
// object of name to value), `id`, `source`, `subject`, `time` and `type`; absent attributes are
// null.
//
// Build (scripts/build-guests.sh does this):
//   jco componentize guest-examples/js/echo/echo.js --wit wit --world-name handler \
//       --disable all -o echo-js.wasm

function base64(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

// Returns `value` with object keys in sorted order, so JSON.stringify writes what serde_json
// and Python's json.dumps(sort_keys=True) write.
function sorted(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return value;
  const out = {};
  for (const key of Object.keys(value).sort()) out[key] = sorted(value[key]);
  return out;
}

export function handle(event) {
  const extensions = {};
  for (const { name, value } of event.extensions) extensions[name] = value;
  const body = {
    id: event.id,
    source: event.source,
    type: event.type,
    subject: event.subject ?? null,
    time: event.time ?? null,
    datacontenttype: event.datacontenttype ?? null,
    extensions,
  };
  try {
    body.data = new TextDecoder("utf-8", { fatal: true }).decode(event.data);
  } catch {
    body.data_base64 = base64(event.data);
  }
  return {
    type: "keyhole.example.echo",
    datacontenttype: "application/json",
    data: new TextEncoder().encode(JSON.stringify(sorted(body))),
  };
}
