#include "json.h"

#include <stdlib.h>
#include <string.h>

void buffer_push(buffer_t *b, const void *bytes, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len) cap *= 2;
        b->bytes = realloc(b->bytes, cap);
        if (!b->bytes) abort();
        b->cap = cap;
    }
    memcpy(b->bytes + b->len, bytes, len);
    b->len += len;
}

void buffer_push_str(buffer_t *b, const char *text) { buffer_push(b, text, strlen(text)); }

void json_string(buffer_t *b, const uint8_t *text, size_t len) {
    static const char hex[] = "0123456789abcdef";
    buffer_push(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        uint8_t c = text[i];
        switch (c) {
        case '"': buffer_push(b, "\\\"", 2); break;
        case '\\': buffer_push(b, "\\\\", 2); break;
        case '\b': buffer_push(b, "\\b", 2); break;
        case '\f': buffer_push(b, "\\f", 2); break;
        case '\n': buffer_push(b, "\\n", 2); break;
        case '\r': buffer_push(b, "\\r", 2); break;
        case '\t': buffer_push(b, "\\t", 2); break;
        default:
            if (c < 0x20) {
                char escaped[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
                buffer_push(b, escaped, 6);
            } else {
                buffer_push(b, &c, 1);
            }
        }
    }
    buffer_push(b, "\"", 1);
}

bool is_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t n;
        uint32_t min, code;
        if ((c & 0xE0) == 0xC0) { n = 1; min = 0x80; code = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { n = 2; min = 0x800; code = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { n = 3; min = 0x10000; code = c & 0x07; }
        else return false;
        if (i + n >= len) return false; /* the sequence runs past the end */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            code = (code << 6) | (s[i + k] & 0x3F);
        }
        if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

void base64(buffer_t *b, const uint8_t *s, size_t len) {
    static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        char out[4] = {table[v >> 18], table[(v >> 12) & 63], table[(v >> 6) & 63], table[v & 63]};
        buffer_push(b, out, 4);
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        char out[4] = {table[v >> 18], table[(v >> 12) & 63], '=', '='};
        buffer_push(b, out, 4);
    } else if (len - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8);
        char out[4] = {table[v >> 18], table[(v >> 12) & 63], table[(v >> 6) & 63], '='};
        buffer_push(b, out, 4);
    }
}
