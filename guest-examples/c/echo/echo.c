/* Replies with exactly what reached it: the event's attributes and its data, as JSON — the same
 * bytes as the Rust, Python and JavaScript echo handlers (guest-examples/echo/src/lib.rs says the
 * format: keys sorted, `data` when the data is UTF-8 else `data_base64`, absent attributes null,
 * extensions as an object of name to value, the last of a repeated name winning).
 *
 * Built by scripts/build-guests.sh: wit-bindgen's C generator makes handler.{h,c} from
 * wit/handler.wit; Debian's clang compiles for wasm32-wasi (reactor); wasm-tools makes the
 * component with the WASI preview 1 adapter. */

#include "handler.h"
#include "json.h"

#include <stdlib.h>
#include <string.h>

static void push_name(buffer_t *b, const char *name) {
    json_string(b, (const uint8_t *)name, strlen(name));
    buffer_push(b, ":", 1);
}

static void push_optional(buffer_t *b, const handler_option_string_t *value) {
    if (value->is_some) {
        json_string(b, value->val.ptr, value->val.len);
    } else {
        buffer_push_str(b, "null");
    }
}

static int compare_names(const handler_string_t *a, const handler_string_t *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int order = memcmp(a->ptr, b->ptr, n);
    if (order != 0) return order;
    return (a->len > b->len) - (a->len < b->len);
}

/* Extensions sorted by name (a stable insertion sort: they are few), then written once per name
 * with the value that came last, as a map built in order would hold. */
static void push_extensions(buffer_t *b, const keyhole_handler_types_list_extension_t *list) {
    size_t n = list->len;
    keyhole_handler_types_extension_t **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) abort();
    for (size_t i = 0; i < n; i++) {
        keyhole_handler_types_extension_t *e = &list->ptr[i];
        size_t j = i;
        while (j > 0 && compare_names(&sorted[j - 1]->name, &e->name) > 0) {
            sorted[j] = sorted[j - 1];
            j--;
        }
        sorted[j] = e;
    }
    buffer_push(b, "{", 1);
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && compare_names(&sorted[i]->name, &sorted[i + 1]->name) == 0) continue;
        if (!first) buffer_push(b, ",", 1);
        first = false;
        json_string(b, sorted[i]->name.ptr, sorted[i]->name.len);
        buffer_push(b, ":", 1);
        json_string(b, sorted[i]->value.ptr, sorted[i]->value.len);
    }
    buffer_push(b, "}", 1);
    free(sorted);
}

bool exports_handler_handle(handler_event_t *event, handler_option_reply_t *ret, handler_handler_error_t *err) {
    (void)err;
    buffer_t body = {0};
    buffer_push(&body, "{", 1);
    if (is_utf8(event->data.ptr, event->data.len)) {
        push_name(&body, "data");
        json_string(&body, event->data.ptr, event->data.len);
    } else {
        push_name(&body, "data_base64");
        buffer_push(&body, "\"", 1);
        base64(&body, event->data.ptr, event->data.len);
        buffer_push(&body, "\"", 1);
    }
    buffer_push(&body, ",", 1);
    push_name(&body, "datacontenttype");
    push_optional(&body, &event->datacontenttype);
    buffer_push(&body, ",", 1);
    push_name(&body, "extensions");
    push_extensions(&body, &event->extensions);
    buffer_push(&body, ",", 1);
    push_name(&body, "id");
    json_string(&body, event->id.ptr, event->id.len);
    buffer_push(&body, ",", 1);
    push_name(&body, "source");
    json_string(&body, event->source.ptr, event->source.len);
    buffer_push(&body, ",", 1);
    push_name(&body, "subject");
    push_optional(&body, &event->subject);
    buffer_push(&body, ",", 1);
    push_name(&body, "time");
    push_optional(&body, &event->time);
    buffer_push(&body, ",", 1);
    push_name(&body, "type");
    json_string(&body, event->type.ptr, event->type.len);
    buffer_push(&body, "}", 1);

    ret->is_some = true;
    handler_string_dup(&ret->val.type, "keyhole.example.echo");
    handler_string_dup(&ret->val.datacontenttype, "application/json");
    ret->val.data.ptr = body.bytes;
    ret->val.data.len = body.len;
    handler_event_free(event);
    return true;
}
