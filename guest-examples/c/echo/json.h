/* A growable byte buffer and the JSON pieces the echo handler writes, byte for byte as the
 * Rust echo's serde_json does (compact; strings escape '"', '\\' and control characters only). */
#ifndef ECHO_JSON_H
#define ECHO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *bytes;
    size_t len;
    size_t cap;
} buffer_t;

void buffer_push(buffer_t *b, const void *bytes, size_t len);
void buffer_push_str(buffer_t *b, const char *text);
/* A JSON string of UTF-8 `text` (already validated). */
void json_string(buffer_t *b, const uint8_t *text, size_t len);
/* Whether `bytes` are well-formed UTF-8, as Rust's `String::from_utf8` decides. */
bool is_utf8(const uint8_t *bytes, size_t len);
/* Standard base64 with padding. */
void base64(buffer_t *b, const uint8_t *bytes, size_t len);

#endif
