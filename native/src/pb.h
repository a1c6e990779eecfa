/* Protobuf wire primitives over plain buffers: varints, tags, skipping unknown fields, UTF-8, encoders.
 *
 * Shared by the codecs of the FraudDetection messages (wire.c) and of the Open Inference Protocol (infer.c);
 * private to libvoxguard. Decoders return VG_OK or VG_INVALID_ARGUMENT with a one-line message.
 */
#ifndef VG_PB_H
#define VG_PB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "voxguard/vg_wire.h"

enum { WT_VARINT = 0, WT_FIXED64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_FIXED32 = 5 };
#define MAX_GROUP_DEPTH 32

__attribute__((format(printf, 3, 4))) static inline int fail(char *err, size_t errcap, const char *fmt, ...) {
    if (errcap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errcap, fmt, ap);
        va_end(ap);
    }
    return VG_INVALID_ARGUMENT;
}

/* Reads a varint at *pos; returns 0, or -1 when truncated or longer than 10 bytes. */
static inline int read_varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*pos >= len) {
            return -1;
        }
        uint8_t b = buf[(*pos)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *value = v;
            return 0;
        }
    }
    return -1;
}

static inline float load_float(const uint8_t *p) {
    uint32_t bits = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Reads a tag; returns 0, or a status with a message when the tag is malformed. */
static inline int read_tag(const uint8_t *buf, size_t len, size_t *pos, uint32_t *field, int *wire, char *err,
                           size_t errcap) {
    size_t at = *pos;
    uint64_t tag;
    *field = 0;
    *wire = 0;
    if (read_varint(buf, len, pos, &tag) != 0) {
        return fail(err, errcap, "malformed request: truncated tag at byte %zu", at);
    }
    *field = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 0x1FFFFFFF) {
        return fail(err, errcap, "malformed request: invalid field number at byte %zu", at);
    }
    return VG_OK;
}

/* Skips the value of a field of wire type `wire` (groups up to their matching end tag). */
static inline int skip_value(const uint8_t *buf, size_t len, size_t *pos, uint32_t field, int wire, int depth,
                             char *err, size_t errcap) {
    uint64_t n;
    size_t at = *pos;
    switch (wire) {
    case WT_VARINT:
        if (read_varint(buf, len, pos, &n) != 0) {
            return fail(err, errcap, "malformed request: truncated varint of field %u at byte %zu", field, at);
        }
        return VG_OK;
    case WT_FIXED64:
        if (len - *pos < 8) {
            return fail(err, errcap, "malformed request: truncated 64-bit value of field %u", field);
        }
        *pos += 8;
        return VG_OK;
    case WT_FIXED32:
        if (len - *pos < 4) {
            return fail(err, errcap, "malformed request: truncated 32-bit value of field %u", field);
        }
        *pos += 4;
        return VG_OK;
    case WT_LEN:
        if (read_varint(buf, len, pos, &n) != 0 || n > len - *pos) {
            return fail(err, errcap, "malformed request: field %u's length runs past the end of the message", field);
        }
        *pos += (size_t)n;
        return VG_OK;
    case WT_SGROUP:
        if (depth >= MAX_GROUP_DEPTH) {
            return fail(err, errcap, "malformed request: groups nested deeper than %d", MAX_GROUP_DEPTH);
        }
        for (;;) {
            uint32_t f;
            int w;
            if (*pos >= len) {
                return fail(err, errcap, "malformed request: group %u is not closed", field);
            }
            int status = read_tag(buf, len, pos, &f, &w, err, errcap);
            if (status != VG_OK) {
                return status;
            }
            if (w == WT_EGROUP) {
                if (f != field) {
                    return fail(err, errcap, "malformed request: group %u closed by end tag %u", field, f);
                }
                return VG_OK;
            }
            status = skip_value(buf, len, pos, f, w, depth + 1, err, errcap);
            if (status != VG_OK) {
                return status;
            }
        }
    case WT_EGROUP:
        return fail(err, errcap, "malformed request: unexpected end-group tag of field %u", field);
    default:
        return fail(err, errcap, "malformed request: invalid wire type %d of field %u", wire, field);
    }
}

/* Valid UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as proto3 requires of a string. */
static inline int valid_utf8(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i += 1;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (len - i <= n) {
            return 0;
        }
        for (size_t k = 1; k <= n; ++k) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return 0;
        }
        i += n + 1;
    }
    return 1;
}

static inline size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        ++n;
    }
    return n;
}

static inline uint8_t *put_varint(uint8_t *out, uint64_t v) {
    while (v >= 0x80) {
        *out++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *out++ = (uint8_t)v;
    return out;
}

static inline uint32_t float_bits(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return bits;
}

static inline uint8_t *put_float(uint8_t *out, uint32_t tag, float f) {
    uint32_t bits = float_bits(f);
    *out++ = (uint8_t)tag;
    out[0] = (uint8_t)bits;
    out[1] = (uint8_t)(bits >> 8);
    out[2] = (uint8_t)(bits >> 16);
    out[3] = (uint8_t)(bits >> 24);
    return out + 4;
}

static inline uint8_t *put_bytes(uint8_t *out, uint32_t tag, const void *data, size_t n) {
    *out++ = (uint8_t)tag;
    out = put_varint(out, n);
    memcpy(out, data, n);
    return out + n;
}

static inline size_t bytes_size(size_t n) {
    return 1 + varint_size(n) + n;
}

#endif /* VG_PB_H */
