/* JSON the way Python's json module reads and writes it, for files that must equal what a Python
 * exporter writes byte for byte: a document is parsed keeping its objects' key order and every
 * number as Python holds it (int: its digits; float: the double), and printed as
 * json.dumps(value, indent=N, sort_keys=S) with the default ensure_ascii=True does. cJSON cannot:
 * it loses the difference between 1 and 1.0 and prints numbers its own way. */
#ifndef NVFP4X_PYJSON_H
#define NVFP4X_PYJSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum nx_pj_type {
    NX_PJ_NULL,
    NX_PJ_FALSE,
    NX_PJ_TRUE,
    NX_PJ_INT,    /* text: the digits as Python's int prints them */
    NX_PJ_FLOAT,  /* num */
    NX_PJ_STRING, /* text, len bytes of UTF-8 (lone surrogates in their 3-byte form) */
    NX_PJ_ARRAY,
    NX_PJ_OBJECT
} nx_pj_type;

typedef struct nx_pj nx_pj;
struct nx_pj {
    nx_pj_type type;
    char *text;
    size_t len;
    double num;
    char *key;     /* a member of an object: its key (UTF-8, key_len bytes) */
    size_t key_len;
    nx_pj *child, *last; /* array elements or object members, in order */
    nx_pj *next;
    int64_t n;     /* number of children */
};

/* Parses text as json.loads does (NaN, Infinity allowed; a repeated key keeps its first place
 * and its last value). NULL on error or out of memory, with the reason and byte in err. */
nx_pj *nx_pj_parse(const char *text, size_t len, char *err, size_t err_len);
void nx_pj_free(nx_pj *v);

/* Builders; NULL when out of memory (a NULL argument makes them fail too, so calls nest). */
nx_pj *nx_pj_new(nx_pj_type type);
nx_pj *nx_pj_string(const char *s);
nx_pj *nx_pj_int(int64_t v);
/* Appends v to an array. Returns v, or NULL (v freed) on failure. */
nx_pj *nx_pj_push(nx_pj *array, nx_pj *v);
/* Appends member key: v to an object without looking for key (the caller knows it is new);
 * v's own key, if it had one, is replaced. */
nx_pj *nx_pj_append(nx_pj *object, const char *key, nx_pj *v);
/* obj[key] = v as Python does: in place when the key exists, else appended. */
nx_pj *nx_pj_set(nx_pj *object, const char *key, nx_pj *v);
/* setdefault: v when key is absent (v is freed otherwise). NULL only on failure. */
nx_pj *nx_pj_setdefault(nx_pj *object, const char *key, nx_pj *v);
/* Removes and frees member key, if present. */
void nx_pj_remove(nx_pj *object, const char *key);
/* Unlinks member key and returns it (the caller owns it), or NULL. */
nx_pj *nx_pj_detach(nx_pj *object, const char *key);
/* Removes (and frees) the members or elements for which drop(member, arg) is non-zero. */
void nx_pj_filter(nx_pj *container, int (*drop)(const nx_pj *member, void *arg), void *arg);
nx_pj *nx_pj_get(const nx_pj *object, const char *key);

/* json.dumps(v, indent=indent, sort_keys=sort_keys), NUL-terminated, *len its length. NULL when
 * out of memory. */
char *nx_pj_dumps(const nx_pj *v, int indent, int sort_keys, size_t *len);

#endif
