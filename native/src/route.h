/* Champion/challenger routing hash: CRC-32 (IEEE, as zlib) then murmur3's fmix32.
 *
 * Must agree bit for bit with ml_pipeline.ab_testing.traffic_splitter.route_hash; a request goes to the
 * challenger when route_hash(request_id) < cut, with cut = round(share * 2**32) computed by Python.
 */
#ifndef VG_ROUTE_H
#define VG_ROUTE_H

#include <stddef.h>
#include <stdint.h>
#include <zlib.h>

/* murmur3's fmix32 finaliser: spreads every input bit over the whole word. */
static inline uint32_t vg_fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t vg_route_hash(const uint8_t *key, size_t len) {
    return vg_fmix32((uint32_t)crc32(0L, key, (uInt)len));
}

#endif /* VG_ROUTE_H */
