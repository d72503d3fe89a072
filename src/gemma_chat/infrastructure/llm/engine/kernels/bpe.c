/* A byte-pair-encoding tokenizer for SentencePiece-style BPE vocabularies (Gemma's), giving
 * the same ids as Hugging Face `tokenizers` with the tokenizer.json transformers writes for
 * them: added tokens matched first (leftmost, longest), spaces as U+2581, merges by rank (ties:
 * leftmost), characters missing from the vocabulary as <0xXX> byte tokens.
 *
 * Why not `tokenizers` itself: parsing the embedded model's large tokenizer.json holds the GIL
 * (so nothing else of a cold start overlaps it) and leaves a large heap; this reads a compact
 * file written next to it at conversion (bpe.py). Figures: DEVELOPMENT.md.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t n_vocab, n_merges, n_added, unk;
    char *blob;        /* every token's bytes */
    int64_t *offset;   /* [n_vocab + 1] into blob */
    uint8_t *special;  /* [n_vocab]: skipped when decoding */
    int32_t *vocab_slots; /* open addressing: token bytes -> id */
    int64_t vocab_mask;
    uint64_t *merge_keys; /* (left << 32 | right) + 1; 0: empty */
    uint32_t *merge_rank, *merge_id;
    int64_t merge_mask;
    int32_t byte_id[256];
    /* added tokens: a byte trie (nodes, and edges in per-node lists) */
    int32_t n_nodes;
    int32_t *node_first_edge, *node_token; /* per node */
    int32_t *edge_next, *edge_target, n_edges;
    uint8_t *edge_byte;
} bpe;

static uint64_t hash_bytes(const char *s, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_pair(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return key;
}

int32_t bpe_token_id(const bpe *t, const char *s, int64_t n) {
    for (uint64_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        const int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (t->offset[id + 1] - t->offset[id] == n && memcmp(t->blob + t->offset[id], s, n) == 0)
            return id;
    }
}

static int merge_find(const bpe *t, int32_t left, int32_t right, uint32_t *rank, uint32_t *id) {
    const uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    for (uint64_t i = hash_pair(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        if (t->merge_keys[i] == 0) return 0;
        if (t->merge_keys[i] == key) {
            *rank = t->merge_rank[i];
            *id = t->merge_id[i];
            return 1;
        }
    }
}

static int read_all(FILE *f, void *p, size_t n) { return fread(p, 1, n, f) == n; }

void bpe_free(bpe *t) {
    if (!t) return;
    free(t->blob);
    free(t->offset);
    free(t->special);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_id);
    free(t->node_first_edge);
    free(t->node_token);
    free(t->edge_next);
    free(t->edge_target);
    free(t->edge_byte);
    free(t);
}

static int32_t trie_step(const bpe *t, int32_t node, uint8_t byte) {
    for (int32_t e = t->node_first_edge[node]; e >= 0; e = t->edge_next[e])
        if (t->edge_byte[e] == byte) return t->edge_target[e];
    return -1;
}

/* File: "GCBPE1\0\0", int32 n_vocab, n_merges, n_added, unk; int32 lengths[n_vocab]; bytes;
 * uint8 special[n_vocab]; int32 merges[n_merges][3] (left, right, result) in rank order;
 * int32 added[n_added]. */
bpe *bpe_load(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    bpe *t = calloc(1, sizeof(bpe));
    char magic[8];
    int32_t head[4];
    int ok = t && read_all(f, magic, 8) && memcmp(magic, "GCBPE1\0\0", 8) == 0 &&
             read_all(f, head, sizeof head);
    int32_t *lengths = NULL, *merges = NULL, *added = NULL;
    if (ok) {
        t->n_vocab = head[0], t->n_merges = head[1], t->n_added = head[2], t->unk = head[3];
        ok = t->n_vocab > 0 && t->n_merges >= 0 && t->n_added >= 0;
    }
    if (ok) {
        lengths = malloc(sizeof(int32_t) * t->n_vocab);
        t->offset = malloc(sizeof(int64_t) * (t->n_vocab + 1));
        ok = lengths && t->offset && read_all(f, lengths, sizeof(int32_t) * t->n_vocab);
    }
    if (ok) {
        t->offset[0] = 0;
        for (int32_t i = 0; i < t->n_vocab; i++) t->offset[i + 1] = t->offset[i] + lengths[i];
        t->blob = malloc(t->offset[t->n_vocab] + 1);
        t->special = malloc(t->n_vocab);
        ok = t->blob && t->special && read_all(f, t->blob, t->offset[t->n_vocab]) &&
             read_all(f, t->special, t->n_vocab);
    }
    if (ok) {
        merges = malloc(sizeof(int32_t) * 3 * (t->n_merges + 1));
        added = malloc(sizeof(int32_t) * (t->n_added + 1));
        ok = merges && added && read_all(f, merges, sizeof(int32_t) * 3 * t->n_merges) &&
             read_all(f, added, sizeof(int32_t) * t->n_added);
    }
    fclose(f);
    if (ok) { /* vocabulary hash */
        int64_t size = 1;
        while (size < 2 * (int64_t)t->n_vocab) size <<= 1;
        t->vocab_mask = size - 1;
        t->vocab_slots = malloc(sizeof(int32_t) * size);
        ok = t->vocab_slots != NULL;
        if (ok) {
            memset(t->vocab_slots, 0xff, sizeof(int32_t) * size);
            for (int32_t id = 0; id < t->n_vocab; id++) {
                const char *s = t->blob + t->offset[id];
                const int64_t n = t->offset[id + 1] - t->offset[id];
                if (bpe_token_id(t, s, n) >= 0) continue; /* a duplicate: the first id wins */
                uint64_t i = hash_bytes(s, n) & t->vocab_mask;
                while (t->vocab_slots[i] >= 0) i = (i + 1) & t->vocab_mask;
                t->vocab_slots[i] = id;
            }
        }
    }
    if (ok) { /* merges hash */
        int64_t size = 1;
        while (size < 2 * (int64_t)t->n_merges + 2) size <<= 1;
        t->merge_mask = size - 1;
        t->merge_keys = calloc(size, sizeof(uint64_t));
        t->merge_rank = malloc(sizeof(uint32_t) * size);
        t->merge_id = malloc(sizeof(uint32_t) * size);
        ok = t->merge_keys && t->merge_rank && t->merge_id;
        for (int32_t r = 0; ok && r < t->n_merges; r++) {
            const uint64_t key =
                (((uint64_t)(uint32_t)merges[3 * r] << 32) | (uint32_t)merges[3 * r + 1]) + 1;
            uint64_t i = hash_pair(key) & t->merge_mask;
            while (t->merge_keys[i] != 0 && t->merge_keys[i] != key) i = (i + 1) & t->merge_mask;
            if (t->merge_keys[i] == key) continue; /* the first (lowest) rank wins */
            t->merge_keys[i] = key;
            t->merge_rank[i] = (uint32_t)r;
            t->merge_id[i] = (uint32_t)merges[3 * r + 2];
        }
    }
    if (ok) { /* byte tokens <0x00>..<0xFF> */
        for (int b = 0; b < 256; b++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            t->byte_id[b] = bpe_token_id(t, name, 6);
        }
    }
    if (ok) { /* added tokens trie */
        int64_t total = 1;
        for (int32_t a = 0; a < t->n_added; a++)
            total += t->offset[added[a] + 1] - t->offset[added[a]];
        t->node_first_edge = malloc(sizeof(int32_t) * total);
        t->node_token = malloc(sizeof(int32_t) * total);
        t->edge_next = malloc(sizeof(int32_t) * total);
        t->edge_target = malloc(sizeof(int32_t) * total);
        t->edge_byte = malloc(total);
        ok = t->node_first_edge && t->node_token && t->edge_next && t->edge_target && t->edge_byte;
        if (ok) {
            t->n_nodes = 1;
            t->node_first_edge[0] = -1;
            t->node_token[0] = -1;
            for (int32_t a = 0; a < t->n_added; a++) {
                const int32_t id = added[a];
                int32_t node = 0;
                for (int64_t k = t->offset[id]; k < t->offset[id + 1]; k++) {
                    const uint8_t byte = (uint8_t)t->blob[k];
                    int32_t next = trie_step(t, node, byte);
                    if (next < 0) {
                        next = t->n_nodes++;
                        t->node_first_edge[next] = -1;
                        t->node_token[next] = -1;
                        const int32_t e = t->n_edges++;
                        t->edge_byte[e] = byte;
                        t->edge_target[e] = next;
                        t->edge_next[e] = t->node_first_edge[node];
                        t->node_first_edge[node] = e;
                    }
                    node = next;
                }
                if (node > 0 && t->node_token[node] < 0) t->node_token[node] = id;
            }
        }
    }
    free(lengths);
    free(merges);
    free(added);
    if (!ok) {
        bpe_free(t);
        return NULL;
    }
    return t;
}

int32_t bpe_vocab_size(const bpe *t) { return t->n_vocab; }

/* The ids of the special tokens (skipped when decoding) into out[cap]; returns how many. */
int32_t bpe_special_ids(const bpe *t, int32_t *out, int32_t cap) {
    int32_t count = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->special[id]) {
            if (count < cap) out[count] = id;
            count++;
        }
    return count;
}

/* One token's bytes: returns the length, *s points into the vocabulary. */
int64_t bpe_token_bytes(const bpe *t, int32_t id, const char **s) {
    if (id < 0 || id >= t->n_vocab) return -1;
    *s = t->blob + t->offset[id];
    return t->offset[id + 1] - t->offset[id];
}

typedef struct {
    uint32_t rank, pos, id;
} merge_entry;

static int before(const merge_entry *a, const merge_entry *b) { /* lowest rank, then pos */
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(merge_entry *h, int64_t *n, merge_entry e) {
    int64_t i = (*n)++;
    while (i > 0) {
        const int64_t parent = (i - 1) / 2;
        if (!before(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
}

static merge_entry heap_pop(merge_entry *h, int64_t *n) {
    const merge_entry top = h[0], last = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && before(&h[child + 1], &h[child])) child++;
        if (!before(&h[child], &last)) break;
        h[i] = h[child];
        i = child;
    }
    if (*n > 0) h[i] = last;
    return top;
}

static int64_t utf8_length(uint8_t lead) {
    if (lead < 0x80) return 1;
    return (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
}

/* BPE of one stretch of text without added tokens; appends ids to out (up to cap); -1 when
 * its buffers could not be allocated. */
static int64_t encode_word(const bpe *t, const char *text, int64_t n, int32_t *out, int64_t cap,
                           int64_t count) {
    if (n == 0) return count;
    /* normalize: ' ' -> U+2581 (3 bytes) */
    char *s = malloc(3 * n + 1);
    if (!s) return -1;
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (text[i] == ' ') {
            s[m++] = (char)0xE2, s[m++] = (char)0x96, s[m++] = (char)0x81;
        } else {
            s[m++] = text[i];
        }
    }
    /* symbols: characters (or their bytes as <0xXX> tokens) */
    int32_t *c = malloc(sizeof(int32_t) * (m + 1));
    int64_t *prev = malloc(sizeof(int64_t) * (m + 1)), *next = malloc(sizeof(int64_t) * (m + 1));
    uint8_t *alive = malloc(m + 1);
    merge_entry *heap = NULL;
    if (!c || !prev || !next || !alive) {
        count = -1;
        goto done;
    }
    int64_t k = 0;
    for (int64_t i = 0; i < m;) {
        int64_t len = utf8_length((uint8_t)s[i]);
        if (i + len > m) len = m - i;
        const int32_t id = bpe_token_id(t, s + i, len);
        if (id >= 0) {
            c[k++] = id;
        } else {
            for (int64_t b = 0; b < len; b++) {
                const int32_t byte = t->byte_id[(uint8_t)s[i + b]];
                c[k++] = byte >= 0 ? byte : t->unk;
            }
        }
        i += len;
    }
    for (int64_t i = 0; i < k; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < k ? i + 1 : -1;
        alive[i] = 1;
    }
    heap = malloc(sizeof(merge_entry) * (3 * k + 4));
    if (!heap) {
        count = -1;
        goto done;
    }
    int64_t queued = 0;
    for (int64_t i = 0; i + 1 < k; i++) {
        uint32_t rank, id;
        if (merge_find(t, c[i], c[i + 1], &rank, &id))
            heap_push(heap, &queued, (merge_entry){rank, (uint32_t)i, id});
    }
    while (queued > 0) {
        const merge_entry top = heap_pop(heap, &queued);
        const int64_t pos = top.pos;
        if (!alive[pos] || next[pos] < 0) continue;
        const int64_t right = next[pos];
        uint32_t rank, id;
        if (!merge_find(t, c[pos], c[right], &rank, &id) || id != top.id) continue; /* stale */
        c[pos] = (int32_t)id;
        alive[right] = 0;
        next[pos] = next[right];
        if (next[right] >= 0) prev[next[right]] = pos;
        if (prev[pos] >= 0 && merge_find(t, c[prev[pos]], c[pos], &rank, &id))
            heap_push(heap, &queued, (merge_entry){rank, (uint32_t)prev[pos], id});
        if (next[pos] >= 0 && merge_find(t, c[pos], c[next[pos]], &rank, &id))
            heap_push(heap, &queued, (merge_entry){rank, (uint32_t)pos, id});
    }
    for (int64_t i = 0; i < k; i++)
        if (alive[i]) {
            if (count < cap) out[count] = c[i];
            count++;
        }
done:
    free(s);
    free(c);
    free(prev);
    free(next);
    free(alive);
    free(heap);
    return count;
}

/* ids of text (UTF-8, n bytes) into out[cap]; returns how many there are (more than cap: call
 * again with room for all), or -1 when a buffer could not be allocated. */
int64_t bpe_encode(const bpe *t, const char *text, int64_t n, int32_t *out, int64_t cap) {
    int64_t count = 0, start = 0;
    for (int64_t i = 0; i < n;) {
        /* the longest added token starting here */
        int32_t node = 0, found = -1;
        int64_t found_end = i;
        for (int64_t j = i; j < n; j++) {
            node = trie_step(t, node, (uint8_t)text[j]);
            if (node < 0) break;
            if (t->node_token[node] >= 0) {
                found = t->node_token[node];
                found_end = j + 1;
            }
        }
        if (found >= 0) {
            count = encode_word(t, text + start, i - start, out, cap, count);
            if (count < 0) return -1;
            if (count < cap) out[count] = found;
            count++;
            i = start = found_end;
        } else {
            i++;
        }
    }
    return encode_word(t, text + start, n - start, out, cap, count);
}

static int utf8_valid(const uint8_t *s, int64_t n) {
    for (int64_t i = 0; i < n;) {
        const uint8_t b = s[i];
        int64_t len;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b >> 5) == 6) {
            len = 2, cp = b & 0x1F;
        } else if ((b >> 4) == 14) {
            len = 3, cp = b & 0x0F;
        } else if ((b >> 3) == 30) {
            len = 4, cp = b & 0x07;
        } else {
            return 0;
        }
        if (i + len > n) return 0;
        for (int64_t k = 1; k < len; k++) {
            if ((s[i + k] >> 6) != 2) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static int64_t put(char *out, int64_t cap, int64_t at, const void *s, int64_t n) {
    if (at + n <= cap) memcpy(out + at, s, n);
    return at + n;
}

/* Pending <0xXX> bytes: as text when they are valid UTF-8, else one U+FFFD each. */
static int64_t flush_bytes(char *out, int64_t cap, int64_t at, const uint8_t *bytes, int64_t n) {
    if (utf8_valid(bytes, n)) return put(out, cap, at, bytes, n);
    for (int64_t i = 0; i < n; i++) at = put(out, cap, at, "\xEF\xBF\xBD", 3);
    return at;
}

/* The text of ids (UTF-8) into out[cap], as `tokenizers` decodes (U+2581 -> ' ', byte tokens
 * fused); returns its length (more than cap: call again with room for all), or -1 when a buffer
 * could not be allocated. */
int64_t bpe_decode(const bpe *t, const int32_t *ids, int64_t n, int32_t skip_special, char *out,
                   int64_t cap) {
    int64_t at = 0, pending = 0;
    uint8_t *bytes = malloc(n + 1);
    if (!bytes) return -1;
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = ids[i];
        if (id < 0 || id >= t->n_vocab || (skip_special && t->special[id])) continue;
        const char *s = t->blob + t->offset[id];
        const int64_t len = t->offset[id + 1] - t->offset[id];
        if (len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
            char hex[3] = {s[3], s[4], 0};
            char *end;
            const long value = strtol(hex, &end, 16);
            if (*end == 0) {
                bytes[pending++] = (uint8_t)value;
                continue;
            }
        }
        at = flush_bytes(out, cap, at, bytes, pending);
        pending = 0;
        for (int64_t k = 0; k < len;) {
            if (k + 3 <= len && (uint8_t)s[k] == 0xE2 && (uint8_t)s[k + 1] == 0x96 &&
                (uint8_t)s[k + 2] == 0x81) {
                at = put(out, cap, at, " ", 1);
                k += 3;
            } else {
                at = put(out, cap, at, s + k, 1);
                k++;
            }
        }
    }
    at = flush_bytes(out, cap, at, bytes, pending);
    free(bytes);
    return at;
}
