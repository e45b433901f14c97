"""The echo handler in Python: replies with exactly what reached it, as the Rust echo does.

The reply is a JSON object with keys in sorted order: `data` (the data as a string when it is
UTF-8) or `data_base64` (standard base64 otherwise), `datacontenttype`, `extensions` (an object
of name to value), `id`, `source`, `subject`, `time` and `type`; absent attributes are null.

Build (scripts/build-guests.sh does this):
    componentize-py -d wit -w handler componentize app -p guest-examples/python/echo \
        --stub-wasi -o echo-py.wasm
"""

import base64
import json
from typing import Optional

import wit_world
from wit_world.imports import types


class WitWorld(wit_world.WitWorld):
    def handle(self, event: types.Event) -> Optional[types.Reply]:
        body = {
            "id": event.id,
            "source": event.source,
            "type": event.type,
            "subject": event.subject,
            "time": event.time,
            "datacontenttype": event.datacontenttype,
            "extensions": {e.name: e.value for e in event.extensions},
        }
        data = bytes(event.data)
        try:
            body["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            body["data_base64"] = base64.b64encode(data).decode("ascii")
        # Compact, sorted keys, UTF-8 as is: the same bytes serde_json writes in the Rust echo.
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return types.Reply(
            type="keyhole.example.echo",
            datacontenttype="application/json",
            data=text.encode("utf-8"),
        )
