/* JSON as Python's json module reads and writes it (include/nvfp4x/pyjson.h). The rules followed
 * are those of CPython's Lib/json: the scanner's number pattern
 * -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)? (an int without fraction or exponent, else a float),
 * strict strings, NaN/Infinity literals; and the encoder's output with an indent: items
 * separated by ",\n", "key": value, empty containers as {} and [], floats as float.__repr__,
 * non-ASCII as \uXXXX escapes. */
#include "nvfp4x/pyjson.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4x/util.h"

#define MAX_DEPTH 900 /* Python's own recursion limit is about 1000 */

/* ---- Values ------------------------------------------------------------------------------- */

nx_pj *nx_pj_new(nx_pj_type type)
{
    nx_pj *v = calloc(1, sizeof *v);
    if (v)
        v->type = type;
    return v;
}

static nx_pj *with_text(nx_pj_type type, const char *s, size_t len)
{
    nx_pj *v = nx_pj_new(type);
    char *t = malloc(len + 1);
    if (v == NULL || t == NULL) {
        free(v);
        free(t);
        return NULL;
    }
    memcpy(t, s, len);
    t[len] = '\0';
    v->text = t;
    v->len = len;
    return v;
}

nx_pj *nx_pj_string(const char *s)
{
    return s ? with_text(NX_PJ_STRING, s, strlen(s)) : NULL;
}

nx_pj *nx_pj_int(int64_t v)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    return with_text(NX_PJ_INT, buf, (size_t)n);
}

void nx_pj_free(nx_pj *v)
{
    while (v) {
        nx_pj *next = v->next;
        nx_pj_free(v->child);
        free(v->text);
        free(v->key);
        free(v);
        v = next;
    }
}

static void link_child(nx_pj *parent, nx_pj *v)
{
    if (parent->last)
        parent->last->next = v;
    else
        parent->child = v;
    parent->last = v;
    parent->n++;
}

nx_pj *nx_pj_push(nx_pj *array, nx_pj *v)
{
    if (array == NULL || v == NULL) {
        nx_pj_free(v);
        return NULL;
    }
    link_child(array, v);
    return v;
}

static int set_key(nx_pj *v, const char *key, size_t len)
{
    free(v->key);
    v->key = malloc(len + 1);
    if (v->key == NULL)
        return -1;
    memcpy(v->key, key, len);
    v->key[len] = '\0';
    v->key_len = len;
    return 0;
}

nx_pj *nx_pj_append(nx_pj *object, const char *key, nx_pj *v)
{
    if (object == NULL || v == NULL || key == NULL || set_key(v, key, strlen(key)) != 0) {
        nx_pj_free(v);
        return NULL;
    }
    link_child(object, v);
    return v;
}

static nx_pj *member(const nx_pj *object, const char *key, size_t len, nx_pj **prev)
{
    nx_pj *p = NULL;
    for (nx_pj *c = object ? object->child : NULL; c; p = c, c = c->next)
        if (c->key_len == len && memcmp(c->key, key, len) == 0) {
            if (prev)
                *prev = p;
            return c;
        }
    return NULL;
}

nx_pj *nx_pj_get(const nx_pj *object, const char *key)
{
    return key ? member(object, key, strlen(key), NULL) : NULL;
}

/* Puts v's contents into old (keeping old's key and place), frees v's shell. */
static nx_pj *replace_in_place(nx_pj *old, nx_pj *v)
{
    nx_pj_free(old->child);
    free(old->text);
    old->type = v->type;
    old->text = v->text;
    old->len = v->len;
    old->num = v->num;
    old->child = v->child;
    old->last = v->last;
    old->n = v->n;
    free(v->key);
    free(v);
    return old;
}

nx_pj *nx_pj_set(nx_pj *object, const char *key, nx_pj *v)
{
    nx_pj *old = key && v ? nx_pj_get(object, key) : NULL;
    return old ? replace_in_place(old, v) : nx_pj_append(object, key, v);
}

nx_pj *nx_pj_setdefault(nx_pj *object, const char *key, nx_pj *v)
{
    nx_pj *old = key && v ? nx_pj_get(object, key) : NULL;
    if (old == NULL)
        return nx_pj_append(object, key, v);
    nx_pj_free(v);
    return old;
}

static void unlink_child(nx_pj *parent, nx_pj *prev, nx_pj *c)
{
    if (prev)
        prev->next = c->next;
    else
        parent->child = c->next;
    if (parent->last == c)
        parent->last = prev;
    parent->n--;
    c->next = NULL;
}

nx_pj *nx_pj_detach(nx_pj *object, const char *key)
{
    nx_pj *prev = NULL, *c = key ? member(object, key, strlen(key), &prev) : NULL;
    if (c)
        unlink_child(object, prev, c);
    return c;
}

void nx_pj_remove(nx_pj *object, const char *key)
{
    nx_pj_free(nx_pj_detach(object, key));
}

void nx_pj_filter(nx_pj *container, int (*drop)(const nx_pj *member, void *arg), void *arg)
{
    nx_pj *prev = NULL, *c = container ? container->child : NULL;
    while (c) {
        nx_pj *next = c->next;
        if (drop(c, arg)) {
            unlink_child(container, prev, c);
            nx_pj_free(c);
        } else {
            prev = c;
        }
        c = next;
    }
}

/* ---- Parsing ------------------------------------------------------------------------------ */

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t err_len;
    int failed;
} parser;

static nx_pj *fail(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static nx_pj *fail(parser *p, const char *fmt, ...)
{
    if (!p->failed && p->err && p->err_len) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(p->err, p->err_len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < p->err_len)
            snprintf(p->err + n, p->err_len - (size_t)n, " at byte %zu", p->pos);
    }
    p->failed = 1;
    return NULL;
}

static int fail_at(parser *p, const char *what)
{
    fail(p, "%s", what);
    return -1;
}

static void skip_space(parser *p)
{
    while (p->pos < p->len && strchr(" \t\n\r", p->s[p->pos]) && p->s[p->pos])
        p->pos++;
}

static int looking_at(const parser *p, const char *word)
{
    size_t n = strlen(word);
    return p->len - p->pos >= n && memcmp(p->s + p->pos, word, n) == 0;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static size_t digits_at(const parser *p, size_t i)
{
    size_t n = 0;
    while (i + n < p->len && is_digit(p->s[i + n]))
        n++;
    return n;
}

static nx_pj *parse_number(parser *p)
{
    size_t start = p->pos, i = p->pos;
    i += i < p->len && p->s[i] == '-';
    size_t intd = digits_at(p, i);
    if (intd == 0)
        return fail(p, "expecting a value");
    i += (p->s[i] == '0') ? 1 : intd; /* "01" is 0 followed by junk, as in Python */
    int is_float = 0;
    if (i + 1 < p->len && p->s[i] == '.' && digits_at(p, i + 1) > 0) {
        i += 1 + digits_at(p, i + 1);
        is_float = 1;
    }
    if (i < p->len && (p->s[i] == 'e' || p->s[i] == 'E')) {
        size_t j = i + 1 + (i + 1 < p->len && (p->s[i + 1] == '+' || p->s[i + 1] == '-'));
        if (digits_at(p, j) > 0) {
            i = j + digits_at(p, j);
            is_float = 1;
        }
    }
    p->pos = i;
    if (!is_float) {
        int negzero = i - start == 2 && p->s[start] == '-' && p->s[start + 1] == '0';
        return negzero ? with_text(NX_PJ_INT, "0", 1)
                       : with_text(NX_PJ_INT, p->s + start, i - start);
    }
    char buf[512];
    if (i - start >= sizeof buf)
        return fail(p, "number too long");
    memcpy(buf, p->s + start, i - start);
    buf[i - start] = '\0';
    nx_pj *v = nx_pj_new(NX_PJ_FLOAT);
    if (v)
        v->num = strtod(buf, NULL);
    return v;
}

/* Growing byte buffer for strings and output. */
typedef struct tbuf {
    char *p;
    size_t len, cap;
    int oom;
} tbuf;

static void put(tbuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void puts_(tbuf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Code point cp as UTF-8 (surrogates too: Python strings may hold them). */
static void put_utf8(tbuf *b, uint32_t cp)
{
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18);
        u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    put(b, u, n);
}

static int hex4(const parser *p, size_t i, uint32_t *out)
{
    uint32_t v = 0;
    if (p->len - i < 4)
        return -1;
    for (size_t k = 0; k < 4; k++) {
        char c = p->s[i + k];
        int d = is_digit(c) ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

/* \uXXXX at p->pos (after the backslash and 'u'); a high surrogate followed by a low one is
 * one code point, as Python decodes it. */
static int unicode_escape(parser *p, tbuf *b)
{
    uint32_t cp, lo;
    if (hex4(p, p->pos, &cp) != 0)
        return -1;
    p->pos += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF && looking_at(p, "\\u") &&
        hex4(p, p->pos + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p->pos += 6;
    }
    put_utf8(b, cp);
    return 0;
}

static int escape(parser *p, tbuf *b)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    char c = p->pos < p->len ? p->s[p->pos++] : '\0';
    if (c == 'u')
        return unicode_escape(p, b);
    const char *at = c ? strchr(from, c) : NULL;
    if (at == NULL)
        return -1;
    put(b, &to[at - from], 1);
    return 0;
}

/* Bytes of the UTF-8 sequence at i, or 0 when it is not valid UTF-8. */
static size_t utf8_len(const parser *p, size_t i)
{
    unsigned char c = (unsigned char)p->s[i];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    if (n == 0 || p->len - i < n)
        return 0;
    for (size_t k = 1; k < n; k++)
        if (((unsigned char)p->s[i + k] & 0xC0) != 0x80)
            return 0;
    return n;
}

/* A string's value at p->pos (the opening quote), into b. */
static int scan_string(parser *p, tbuf *b)
{
    p->pos++;
    for (;;) {
        if (p->pos >= p->len)
            return fail_at(p, "unterminated string");
        char c = p->s[p->pos];
        if (c == '"') {
            p->pos++;
            put(b, "", 0);
            return b->oom ? -1 : 0;
        }
        if ((unsigned char)c < 0x20)
            return fail_at(p, "invalid control character in a string");
        if (c == '\\') {
            p->pos++;
            if (escape(p, b) != 0)
                return fail_at(p, "invalid escape in a string");
            continue;
        }
        size_t n = utf8_len(p, p->pos);
        if (n == 0)
            return fail_at(p, "invalid UTF-8 in a string");
        put(b, p->s + p->pos, n);
        p->pos += n;
    }
}

static nx_pj *parse_value(parser *p, int depth);

static nx_pj *parse_string(parser *p)
{
    tbuf b = { 0 };
    if (scan_string(p, &b) != 0) {
        free(b.p);
        return p->failed ? NULL : fail(p, "out of memory");
    }
    nx_pj *v = with_text(NX_PJ_STRING, b.p ? b.p : "", b.len);
    free(b.p);
    return v ? v : fail(p, "out of memory");
}

static nx_pj *parse_array(parser *p, int depth)
{
    nx_pj *a = nx_pj_new(NX_PJ_ARRAY);
    if (a == NULL)
        return fail(p, "out of memory");
    p->pos++;
    skip_space(p);
    if (p->pos < p->len && p->s[p->pos] == ']') {
        p->pos++;
        return a;
    }
    for (;;) {
        nx_pj *v = parse_value(p, depth + 1);
        if (v == NULL || nx_pj_push(a, v) == NULL)
            break;
        skip_space(p);
        char c = p->pos < p->len ? p->s[p->pos++] : '\0';
        if (c == ']')
            return a;
        if (c != ',') {
            fail(p, "expecting ',' or ']'");
            break;
        }
    }
    nx_pj_free(a);
    return p->failed ? NULL : fail(p, "out of memory");
}

/* The value after "key": in a member, or NULL. */
static nx_pj *member_value(parser *p, int depth)
{
    skip_space(p);
    if (p->pos >= p->len || p->s[p->pos] != ':')
        return fail(p, "expecting ':'");
    p->pos++;
    return parse_value(p, depth + 1);
}

/* Stores v under key in o; a repeated key keeps its place and takes the new value. */
static int member_store(parser *p, nx_pj *o, nx_strmap *seen, const char *k, size_t len,
                        nx_pj *v)
{
    int simple = strlen(k) == len; /* no NUL inside: the map can hold it */
    nx_pj *old = !simple || nx_strmap_get(seen, k) >= 0 ? member(o, k, len, NULL) : NULL;
    if (old) {
        replace_in_place(old, v);
        return 0;
    }
    if (set_key(v, k, len) != 0 || (simple && nx_strmap_put(seen, k, 0) < 0)) {
        nx_pj_free(v);
        fail(p, "out of memory");
        return -1;
    }
    link_child(o, v);
    return 0;
}

/* One member "key": value into o. */
static int parse_member(parser *p, nx_pj *o, nx_strmap *seen, int depth)
{
    tbuf key = { 0 };
    skip_space(p);
    if (p->pos >= p->len || p->s[p->pos] != '"') {
        fail(p, "expecting a property name in double quotes");
        return -1;
    }
    int rc = scan_string(p, &key);
    if (rc != 0 && !p->failed)
        fail(p, "out of memory");
    nx_pj *v = rc == 0 ? member_value(p, depth) : NULL;
    rc = v ? member_store(p, o, seen, key.p ? key.p : "", key.len, v) : -1;
    free(key.p);
    return rc;
}

static nx_pj *parse_object(parser *p, int depth)
{
    nx_pj *o = nx_pj_new(NX_PJ_OBJECT);
    nx_strmap seen = { 0 };
    if (o == NULL || nx_strmap_init(&seen, 8) != 0) {
        nx_pj_free(o);
        return fail(p, "out of memory");
    }
    p->pos++;
    skip_space(p);
    int done = p->pos < p->len && p->s[p->pos] == '}';
    p->pos += done;
    while (!done && parse_member(p, o, &seen, depth) == 0) {
        skip_space(p);
        char c = p->pos < p->len ? p->s[p->pos++] : '\0';
        done = c == '}';
        if (!done && c != ',')
            fail(p, "expecting ',' or '}'");
        if (p->failed)
            break;
    }
    nx_strmap_free(&seen);
    if (done && !p->failed)
        return o;
    nx_pj_free(o);
    return p->failed ? NULL : fail(p, "out of memory");
}

static nx_pj *parse_value(parser *p, int depth)
{
    if (depth > MAX_DEPTH)
        return fail(p, "nested too deeply");
    skip_space(p);
    if (p->pos >= p->len)
        return fail(p, "expecting a value");
    static const struct { const char *word; nx_pj_type type; double num; } words[] = {
        { "null", NX_PJ_NULL, 0 }, { "true", NX_PJ_TRUE, 0 }, { "false", NX_PJ_FALSE, 0 },
        { "NaN", NX_PJ_FLOAT, NAN }, { "Infinity", NX_PJ_FLOAT, INFINITY },
        { "-Infinity", NX_PJ_FLOAT, -INFINITY } };
    char c = p->s[p->pos];
    if (c == '"')
        return parse_string(p);
    if (c == '{')
        return parse_object(p, depth);
    if (c == '[')
        return parse_array(p, depth);
    for (size_t i = 0; i < sizeof words / sizeof *words; i++)
        if (looking_at(p, words[i].word)) {
            nx_pj *v = nx_pj_new(words[i].type);
            p->pos += strlen(words[i].word);
            if (v)
                v->num = words[i].num;
            return v ? v : fail(p, "out of memory");
        }
    return parse_number(p);
}

nx_pj *nx_pj_parse(const char *text, size_t len, char *err, size_t err_len)
{
    parser p = { text, len, 0, err, err_len, 0 };
    nx_pj *v = parse_value(&p, 0);
    skip_space(&p);
    if (v && p.pos < p.len) {
        nx_pj_free(v);
        return fail(&p, "extra data");
    }
    return v;
}

/* ---- Printing ----------------------------------------------------------------------------- */

/* float.__repr__: the shortest digits that read back as d, positional when the decimal point
 * position is in (-4, 16], else d.ddde+XX. */
static void put_float(tbuf *b, double d)
{
    char s[40], digits[24], out[64];
    if (isnan(d) || isinf(d)) {
        puts_(b, isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    if (d == 0.0) {
        puts_(b, signbit(d) ? "-0.0" : "0.0");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(s, sizeof s, "%.*e", prec - 1, d);
        if (strtod(s, NULL) == d)
            break;
    }
    const char *m = s + (s[0] == '-');
    size_t nd = 0;
    for (const char *q = m; *q && *q != 'e'; q++)
        if (is_digit(*q))
            digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int exp10 = atoi(strchr(s, 'e') + 1), decpt = exp10 + 1;
    const char *sign = d < 0 ? "-" : "";
    if (decpt <= -4 || decpt > 16)
        snprintf(out, sizeof out, "%s%c%s%.*se%c%02d", sign, digits[0], nd > 1 ? "." : "",
                 (int)nd - 1, digits + 1, exp10 < 0 ? '-' : '+', abs(exp10));
    else if (decpt <= 0)
        snprintf(out, sizeof out, "%s0.%.*s%s", sign, -decpt, "0000", digits);
    else if ((size_t)decpt >= nd)
        snprintf(out, sizeof out, "%s%s%.*s.0", sign, digits, decpt - (int)nd,
                 "0000000000000000");
    else
        snprintf(out, sizeof out, "%s%.*s.%s", sign, decpt, digits, digits + decpt);
    puts_(b, out);
}

/* Next code point of UTF-8 s (len bytes left); *n its length (1 for a stray byte). */
static uint32_t next_cp(const unsigned char *s, size_t len, size_t *n)
{
    unsigned char c = s[0];
    size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (k > len)
        k = 1;
    uint32_t cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
    for (size_t i = 1; i < k; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    *n = k;
    return cp;
}

/* A Python str as json.dumps writes it with ensure_ascii: printable ASCII as is, '"' and '\\'
 * and \n \r \t \b \f escaped short, everything else as \uXXXX (surrogate pairs above U+FFFF). */
static void put_string(tbuf *b, const char *s, size_t len)
{
    static const char *const shortesc[32] = { ['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n",
                                              ['\f'] = "\\f", ['\r'] = "\\r" };
    char esc[16];
    put(b, "\"", 1);
    for (size_t i = 0; i < len;) {
        size_t n;
        uint32_t cp = next_cp((const unsigned char *)s + i, len - i, &n);
        i += n;
        if (cp == '"' || cp == '\\') {
            put(b, cp == '"' ? "\\\"" : "\\\\", 2);
        } else if (cp < 0x20 && shortesc[cp]) {
            puts_(b, shortesc[cp]);
        } else if (cp >= 0x20 && cp < 0x7F) {
            char ch = (char)cp;
            put(b, &ch, 1);
        } else if (cp < 0x10000) {
            put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", cp));
        } else {
            cp -= 0x10000;
            put(b, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xD800 + (cp >> 10),
                                         0xDC00 + (cp & 0x3FF)));
        }
    }
    put(b, "\"", 1);
}

static void newline(tbuf *b, int indent, int level)
{
    put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++)
        put(b, " ", 1);
}

static int cmp_member(const void *pa, const void *pb)
{
    const nx_pj *a = *(const nx_pj *const *)pa, *b = *(const nx_pj *const *)pb;
    size_t n = a->key_len < b->key_len ? a->key_len : b->key_len;
    int c = memcmp(a->key, b->key, n);
    return c ? c : (a->key_len > b->key_len) - (a->key_len < b->key_len);
}

static void put_value(tbuf *b, const nx_pj *v, int indent, int sort, int level);

static void put_container(tbuf *b, const nx_pj *v, int indent, int sort, int level)
{
    int obj = v->type == NX_PJ_OBJECT;
    if (v->n == 0) {
        puts_(b, obj ? "{}" : "[]");
        return;
    }
    const nx_pj **items = malloc((size_t)v->n * sizeof *items);
    if (items == NULL) {
        b->oom = 1;
        return;
    }
    int64_t n = 0;
    for (const nx_pj *c = v->child; c; c = c->next)
        items[n++] = c;
    if (obj && sort)
        qsort(items, (size_t)n, sizeof *items, cmp_member);
    put(b, obj ? "{" : "[", 1);
    for (int64_t i = 0; i < n; i++) {
        if (i)
            put(b, ",", 1);
        newline(b, indent, level + 1);
        if (obj) {
            put_string(b, items[i]->key, items[i]->key_len);
            put(b, ": ", 2);
        }
        put_value(b, items[i], indent, sort, level + 1);
    }
    free(items);
    newline(b, indent, level);
    put(b, obj ? "}" : "]", 1);
}

static void put_value(tbuf *b, const nx_pj *v, int indent, int sort, int level)
{
    switch (v->type) {
    case NX_PJ_NULL: puts_(b, "null"); break;
    case NX_PJ_FALSE: puts_(b, "false"); break;
    case NX_PJ_TRUE: puts_(b, "true"); break;
    case NX_PJ_INT: put(b, v->text, v->len); break;
    case NX_PJ_FLOAT: put_float(b, v->num); break;
    case NX_PJ_STRING: put_string(b, v->text, v->len); break;
    default: put_container(b, v, indent, sort, level); break;
    }
}

char *nx_pj_dumps(const nx_pj *v, int indent, int sort_keys, size_t *len)
{
    tbuf b = { 0 };
    put_value(&b, v, indent, sort_keys, 0);
    put(&b, "", 0);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
