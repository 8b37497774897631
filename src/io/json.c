/* A strict JSON parser (RFC 8259) into a small tree, plus helpers for metadata objects of
 * string values. Input comes from files we do not trust, so every read is bounds-checked,
 * strings are checked to be valid UTF-8, and recursion depth is capped. */
#include "q3r/io.h"

#include "base/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 64

typedef struct {
    const char *s;
    size_t len, pos;
    q3r_error *err;
} parser;

static q3r_status perr(parser *p, const char *what) {
    return q3r_fail(p->err, Q3R_EFORMAT, "JSON at byte %zu: %s", p->pos, what);
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

/* Growable byte buffer for decoded strings. */
typedef struct {
    char *b;
    size_t n, cap;
} sbuf;

static int sbuf_put(sbuf *b, const char *src, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->n + n + 1) cap *= 2;
        char *nb = realloc(b->b, cap);
        if (!nb) return -1;
        b->b = nb;
        b->cap = cap;
    }
    memcpy(b->b + b->n, src, n);
    b->n += n;
    b->b[b->n] = '\0';
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_hex4(parser *p, unsigned *out) {
    if (p->len - p->pos < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p->s[p->pos + i]);
        if (h < 0) return -1;
        v = v * 16 + (unsigned)h;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static size_t utf8_encode(unsigned cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence starting at s[0] (at most n bytes), 0 if invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static size_t utf8_valid(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t k;
    unsigned cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        cp = c & 0x07;
    } else return 0;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    return k;
}

/* At p->s[p->pos] == '"'. Decodes into a malloc'd NUL-terminated string. */
static q3r_status parse_string(parser *p, char **out) {
    sbuf b = {0};
    p->pos++; /* opening quote */
    for (;;) {
        if (p->pos >= p->len) {
            free(b.b);
            return perr(p, "unterminated string");
        }
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') {
            p->pos++;
            break;
        }
        if (c < 0x20) {
            free(b.b);
            return perr(p, "control character in string");
        }
        if (c == '\\') {
            p->pos++;
            if (p->pos >= p->len) {
                free(b.b);
                return perr(p, "unterminated escape");
            }
            char e = p->s[p->pos++], o[4];
            size_t on = 1;
            switch (e) {
            case '"': o[0] = '"'; break;
            case '\\': o[0] = '\\'; break;
            case '/': o[0] = '/'; break;
            case 'b': o[0] = '\b'; break;
            case 'f': o[0] = '\f'; break;
            case 'n': o[0] = '\n'; break;
            case 'r': o[0] = '\r'; break;
            case 't': o[0] = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (read_hex4(p, &cp)) {
                    free(b.b);
                    return perr(p, "bad \\u escape");
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        free(b.b);
                        return perr(p, "unpaired surrogate in \\u escape");
                    }
                    p->pos += 2;
                    if (read_hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                        free(b.b);
                        return perr(p, "unpaired surrogate in \\u escape");
                    }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    free(b.b);
                    return perr(p, "unpaired surrogate in \\u escape");
                }
                if (cp == 0) {
                    free(b.b);
                    return perr(p, "\\u0000 in string not supported");
                }
                on = utf8_encode(cp, o);
                break;
            }
            default: free(b.b); return perr(p, "unknown escape in string");
            }
            if (sbuf_put(&b, o, on)) {
                free(b.b);
                return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
            }
            continue;
        }
        size_t k = utf8_valid((const unsigned char *)p->s + p->pos, p->len - p->pos);
        if (!k) {
            free(b.b);
            return perr(p, "invalid UTF-8 in string");
        }
        if (sbuf_put(&b, p->s + p->pos, k)) {
            free(b.b);
            return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
        }
        p->pos += k;
    }
    if (!b.b && sbuf_put(&b, "", 0)) return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
    *out = b.b;
    return Q3R_OK;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static q3r_status parse_number(parser *p, q3r_json *v) {
    size_t start = p->pos;
    const char *s = p->s;
#define AT(i) ((i) < p->len ? s[i] : '\0')
    size_t i = p->pos;
    if (AT(i) == '-') i++;
    if (AT(i) == '0') i++;
    else if (is_digit(AT(i))) {
        while (is_digit(AT(i))) i++;
    } else {
        p->pos = i;
        return perr(p, "bad number");
    }
    if (AT(i) == '.') {
        i++;
        if (!is_digit(AT(i))) {
            p->pos = i;
            return perr(p, "bad number: digit expected after '.'");
        }
        while (is_digit(AT(i))) i++;
    }
    if (AT(i) == 'e' || AT(i) == 'E') {
        i++;
        if (AT(i) == '+' || AT(i) == '-') i++;
        if (!is_digit(AT(i))) {
            p->pos = i;
            return perr(p, "bad number: digit expected in exponent");
        }
        while (is_digit(AT(i))) i++;
    }
#undef AT
    size_t n = i - start;
    v->text = malloc(n + 1);
    if (!v->text) return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
    memcpy(v->text, s + start, n);
    v->text[n] = '\0';
    v->number = strtod(v->text, NULL); /* overflow gives +-HUGE_VAL, which is fine here */
    v->type = Q3R_JSON_NUMBER;
    p->pos = i;
    return Q3R_OK;
}

static int match_lit(parser *p, const char *lit) {
    size_t n = strlen(lit);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, lit, n) != 0) return 0;
    p->pos += n;
    return 1;
}

static q3r_status push_item(parser *p, q3r_json *parent, size_t *cap, q3r_json **slot) {
    if (parent->count == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        q3r_json *ni = realloc(parent->items, nc * sizeof *ni);
        if (!ni) return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
        parent->items = ni;
        *cap = nc;
    }
    *slot = &parent->items[parent->count++];
    memset(*slot, 0, sizeof **slot);
    return Q3R_OK;
}

static q3r_status parse_value(parser *p, q3r_json *v, int depth);

static int cmp_key(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* An object's keys are unique: checked once it is complete, on sorted copies of the key pointers.
 * (Each key against the ones before took minutes for a 650 KB object of 60000 keys, and a
 * safetensors header may be 100 MB.) */
static q3r_status check_keys(parser *p, const q3r_json *v) {
    if (v->count < 2) return Q3R_OK;
    char **k = malloc(v->count * sizeof *k);
    if (!k) return q3r_fail(p->err, Q3R_ENOMEM, "JSON: out of memory");
    for (size_t i = 0; i < v->count; i++) k[i] = v->items[i].key;
    qsort(k, v->count, sizeof *k, cmp_key);
    const char *dup = NULL;
    for (size_t i = 1; i < v->count && !dup; i++)
        if (!strcmp(k[i - 1], k[i])) dup = k[i];
    q3r_status s = Q3R_OK;
    if (dup)
        s = q3r_fail(p->err, Q3R_EFORMAT, "JSON at byte %zu: duplicate key '%s' in the object ending here",
                     p->pos - 1, dup);
    free(k);
    return s;
}

static q3r_status parse_container(parser *p, q3r_json *v, int depth, int is_object) {
    if (depth >= JSON_MAX_DEPTH) return perr(p, "nesting too deep");
    v->type = is_object ? Q3R_JSON_OBJECT : Q3R_JSON_ARRAY;
    char close = is_object ? '}' : ']';
    size_t cap = 0;
    p->pos++; /* '{' or '[' */
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return Q3R_OK;
    }
    for (;;) {
        q3r_json *item = NULL;
        q3r_status s;
        char *key = NULL;
        skip_ws(p);
        if (is_object) {
            if (p->pos >= p->len || p->s[p->pos] != '"') return perr(p, "expected a string key");
            if ((s = parse_string(p, &key))) return s;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') {
                free(key);
                return perr(p, "expected ':'");
            }
            p->pos++;
        }
        if ((s = push_item(p, v, &cap, &item))) {
            free(key);
            return s;
        }
        item->key = key;
        if ((s = parse_value(p, item, depth + 1))) return s;
        skip_ws(p);
        if (p->pos >= p->len) return perr(p, is_object ? "unterminated object" : "unterminated array");
        char c = p->s[p->pos++];
        if (c == close) return is_object ? check_keys(p, v) : Q3R_OK;
        if (c != ',') {
            p->pos--;
            return perr(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
}

static q3r_status parse_value(parser *p, q3r_json *v, int depth) {
    skip_ws(p);
    if (p->pos >= p->len) return perr(p, "unexpected end of input");
    char c = p->s[p->pos];
    switch (c) {
    case '{': return parse_container(p, v, depth, 1);
    case '[': return parse_container(p, v, depth, 0);
    case '"': v->type = Q3R_JSON_STRING; return parse_string(p, &v->text);
    case 't':
        if (match_lit(p, "true")) {
            v->type = Q3R_JSON_BOOL;
            v->boolean = 1;
            return Q3R_OK;
        }
        break;
    case 'f':
        if (match_lit(p, "false")) {
            v->type = Q3R_JSON_BOOL;
            v->boolean = 0;
            return Q3R_OK;
        }
        break;
    case 'n':
        if (match_lit(p, "null")) {
            v->type = Q3R_JSON_NULL;
            return Q3R_OK;
        }
        break;
    default:
        if (c == '-' || is_digit(c)) return parse_number(p, v);
    }
    return perr(p, "unexpected character");
}

static void json_free_inner(q3r_json *v) {
    for (size_t i = 0; i < v->count; i++) json_free_inner(&v->items[i]);
    free(v->items);
    free(v->key);
    free(v->text);
}

void q3r_json_free(q3r_json *v) {
    if (!v) return;
    json_free_inner(v);
    memset(v, 0, sizeof *v);
}

q3r_status q3r_json_parse(const char *text, size_t len, q3r_json *out, q3r_error *err) {
    memset(out, 0, sizeof *out);
    if (!text) return q3r_fail(err, Q3R_EINVAL, "JSON: no text");
    parser p = {text, len, 0, err};
    q3r_status s = parse_value(&p, out, 0);
    if (!s) {
        skip_ws(&p);
        if (p.pos != p.len) s = perr(&p, "trailing characters after the value");
    }
    if (s) q3r_json_free(out);
    return s;
}

const q3r_json *q3r_json_find(const q3r_json *obj, const char *key) {
    if (!obj || obj->type != Q3R_JSON_OBJECT) return NULL;
    for (size_t i = 0; i < obj->count; i++)
        if (strcmp(obj->items[i].key, key) == 0) return &obj->items[i];
    return NULL;
}

q3r_status q3r_json_as_u64(const q3r_json *v, uint64_t *out, q3r_error *err) {
    if (!v || v->type != Q3R_JSON_NUMBER)
        return q3r_fail(err, Q3R_EFORMAT, "expected a non-negative integer, got a non-number");
    uint64_t x = 0;
    for (const char *c = v->text; *c; c++) {
        if (!is_digit(*c))
            return q3r_fail(err, Q3R_EFORMAT, "expected a non-negative integer, got %s", v->text);
        unsigned d = (unsigned)(*c - '0');
        if (x > (UINT64_MAX - d) / 10)
            return q3r_fail(err, Q3R_EFORMAT, "integer %s does not fit in 64 bits", v->text);
        x = x * 10 + d;
    }
    *out = x;
    return Q3R_OK;
}

q3r_status q3r_json_get_string(const char *json, const char *key, char *out, size_t cap, q3r_error *err) {
    if (!json) return q3r_fail(err, Q3R_EFORMAT, "no JSON object to read '%s' from", key);
    q3r_json root;
    q3r_status s = q3r_json_parse(json, strlen(json), &root, err);
    if (s) return s;
    const q3r_json *v = q3r_json_find(&root, key);
    if (root.type != Q3R_JSON_OBJECT) s = q3r_fail(err, Q3R_EFORMAT, "JSON is not an object");
    else if (!v) s = q3r_fail(err, Q3R_EFORMAT, "key '%s' not found", key);
    else if (v->type != Q3R_JSON_STRING) s = q3r_fail(err, Q3R_EFORMAT, "value of '%s' is not a string", key);
    else if (strlen(v->text) + 1 > cap)
        s = q3r_fail(err, Q3R_EINVAL, "value of '%s' (%zu bytes) does not fit in %zu", key, strlen(v->text),
                     cap);
    else memcpy(out, v->text, strlen(v->text) + 1);
    q3r_json_free(&root);
    return s;
}

int q3r_json_append_string(char **buf, size_t *len, size_t *cap, const char *s) {
    return q3r_json_escape_append(buf, len, cap, s);
}

q3r_status q3r_json_set_string(char **json, const char *key, const char *value, q3r_error *err) {
    q3r_json root = {0};
    q3r_status s;
    if (*json) {
        if ((s = q3r_json_parse(*json, strlen(*json), &root, err))) return s;
        if (root.type != Q3R_JSON_OBJECT) {
            q3r_json_free(&root);
            return q3r_fail(err, Q3R_EFORMAT, "JSON is not an object");
        }
    }
    /* Rebuild the object with members in their order: strings re-escaped, other simple
     * values written back from their literal text. Nested values are refused. */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int replaced = 0, fail = 0;
    const char *sep = "";
#define PUT(str)                                 \
    do {                                         \
        const char *put_ = (str);                \
        size_t n_ = strlen(put_);                \
        if (len + n_ + 1 > cap) {                \
            size_t nc_ = cap ? cap : 64;         \
            while (nc_ < len + n_ + 1) nc_ *= 2; \
            char *nb_ = realloc(buf, nc_);       \
            if (!nb_) {                          \
                fail = 1;                        \
                break;                           \
            }                                    \
            buf = nb_;                           \
            cap = nc_;                           \
        }                                        \
        memcpy(buf + len, put_, n_ + 1);         \
        len += n_;                               \
    } while (0)
    PUT("{");
    for (size_t i = 0; i < root.count && !fail; i++) {
        const q3r_json *m = &root.items[i];
        PUT(sep);
        sep = ",";
        if (fail || q3r_json_append_string(&buf, &len, &cap, m->key)) {
            fail = 1;
            break;
        }
        PUT(":");
        const char *v = NULL;
        if (strcmp(m->key, key) == 0) {
            v = value;
            replaced = 1;
        } else if (m->type == Q3R_JSON_STRING) v = m->text;
        if (v) {
            if (fail || q3r_json_append_string(&buf, &len, &cap, v)) {
                fail = 1;
                break;
            }
        } else if (m->type == Q3R_JSON_NUMBER) {
            PUT(m->text);
        } else if (m->type == Q3R_JSON_BOOL) {
            PUT(m->boolean ? "true" : "false");
        } else if (m->type == Q3R_JSON_NULL) {
            PUT("null");
        } else {
            /* the message first: m->key lives in root */
            q3r_fail(err, Q3R_EFORMAT, "member '%s' is not a simple value", m->key);
            q3r_json_free(&root);
            free(buf);
            return Q3R_EFORMAT;
        }
    }
    if (!replaced && !fail) {
        PUT(sep);
        if (!fail && q3r_json_append_string(&buf, &len, &cap, key)) fail = 1;
        if (!fail) PUT(":");
        if (!fail && q3r_json_append_string(&buf, &len, &cap, value)) fail = 1;
    }
    if (!fail) PUT("}");
#undef PUT
    q3r_json_free(&root);
    if (fail) {
        free(buf);
        return q3r_fail(err, Q3R_ENOMEM, "JSON: out of memory");
    }
    free(*json);
    *json = buf;
    return Q3R_OK;
}
