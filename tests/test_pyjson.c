/* pyjson: documents parsed and printed exactly as Python's json.loads / json.dumps(indent,
 * sort_keys) do (expected texts written by CPython 3.11's json module), the builders, and the
 * refusals of malformed text. */
#include "nvfp4x/pyjson.h"

#include <string.h>

#include "nx_test.h"

static const struct {
    const char *in;
    int indent, sort;
    const char *want;
} cases[] = {
    { "{\"b\": 1, \"a\": [1.0, 2.5, 1e-06, 1e16, 1234567890123456.0, 0.0001, -0.0, 1E40"
      "0, 100, -0, 3.14159265358979, 5e-324, 1.7976931348623157e308, 123456789012345678"
      "901234567890], \"c\": {}, \"d\": [], \"e\": null, \"f\": true, \"g\": false}",
      2, 1,
      "{\n  \"a\": [\n    1.0,\n    2.5,\n    1e-06,\n    1e+16,\n    1234567890123456."
      "0,\n    0.0001,\n    -0.0,\n    Infinity,\n    100,\n    0,\n    3.1415926535897"
      "9,\n    5e-324,\n    1.7976931348623157e+308,\n    12345678901234567890123456789"
      "0\n  ],\n  \"b\": 1,\n  \"c\": {},\n  \"d\": [],\n  \"e\": null,\n  \"f\": true,"
      "\n  \"g\": false\n}" },
    { "{\"z\": \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\n\\t\\u0001\\u007f\", "
      "\"\\u00e9\": 1, \"e\": 2, \"a\": {\"y\": [[], {}], \"x\": NaN}}",
      2, 1,
      "{\n  \"a\": {\n    \"x\": NaN,\n    \"y\": [\n      [],\n      {}\n    ]\n  },\n"
      "  \"e\": 2,\n  \"z\": \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ / \\n\\t\\u0001"
      "\\u007f\",\n  \"\\u00e9\": 1\n}" },
    { "{\"z\": 1, \"a\": 2, \"z\": 3, \"m\": {\"k\": [1, {\"q\": \"\xc3""\xa9""\"}]}}",
      2, 0,
      "{\n  \"z\": 3,\n  \"a\": 2,\n  \"m\": {\n    \"k\": [\n      1,\n      {\n      "
      "  \"q\": \"\\u00e9\"\n      }\n    ]\n  }\n}" },
    { "[1, \"x\", -Infinity, Infinity, 0.1, 0.5e1, 10000000000000000.0, 999999999999999"
      "8.0, 2.2250738585072014e-308]",
      4, 0,
      "[\n    1,\n    \"x\",\n    -Infinity,\n    Infinity,\n    0.1,\n    5.0,\n    1e"
      "+16,\n    9999999999999998.0,\n    2.2250738585072014e-308\n]" },
    { "\"\\ud800 lone\"",
      2, 0,
      "\"\\ud800 lone\"" },
    { "{}",
      2, 1,
      "{}" },
};

static void test_round_trips(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char err[128] = "";
        nx_pj *v = nx_pj_parse(cases[i].in, strlen(cases[i].in), err, sizeof err);
        CHECK_MSG(v != NULL, "case %zu: %s", i, err);
        size_t len = 0;
        char *out = v ? nx_pj_dumps(v, cases[i].indent, cases[i].sort, &len) : NULL;
        CHECK_MSG(out && strcmp(out, cases[i].want) == 0 && len == strlen(cases[i].want),
                  "case %zu:\n%s\nexpected\n%s", i, out ? out : "(null)", cases[i].want);
        free(out);
        nx_pj_free(v);
    }
}

static void test_builders(void)
{
    nx_pj *o = nx_pj_new(NX_PJ_OBJECT);
    nx_pj_append(o, "b", nx_pj_int(-3));
    nx_pj_append(o, "a", nx_pj_string("x"));
    nx_pj *arr = nx_pj_append(o, "l", nx_pj_new(NX_PJ_ARRAY));
    nx_pj_push(arr, nx_pj_int(128));
    nx_pj_set(o, "b", nx_pj_new(NX_PJ_NULL));          /* in place */
    nx_pj_setdefault(o, "a", nx_pj_string("ignored"));  /* present: kept */
    nx_pj_setdefault(o, "c", nx_pj_new(NX_PJ_TRUE));
    nx_pj_remove(o, "l");
    char *out = nx_pj_dumps(o, 2, 0, NULL);
    CHECK_MSG(out && strcmp(out, "{\n  \"b\": null,\n  \"a\": \"x\",\n  \"c\": true\n}") == 0,
              "%s", out ? out : "(null)");
    free(out);
    CHECK(nx_pj_get(o, "c") && nx_pj_get(o, "c")->type == NX_PJ_TRUE && !nx_pj_get(o, "l"));
    CHECK(o->n == 3);
    nx_pj_free(o);
    CHECK(nx_pj_push(NULL, nx_pj_int(1)) == NULL); /* frees its argument (ASan would tell) */
}

static void test_refusals(void)
{
    static const char *const bad[] = { "", "{", "[1,]", "{\"a\" 1}", "01", "[1] 2", "\"\x01\"",
                                       "\"\\x\"", "{\"a\":1,}", "nul", "-", "\"\xff\"", "1.",
                                       "\"abc" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char err[128] = "";
        nx_pj *v = nx_pj_parse(bad[i], strlen(bad[i]), err, sizeof err);
        CHECK_MSG(v == NULL && strstr(err, " at byte "), "'%s' accepted or no reason: %s",
                  bad[i], err);
        nx_pj_free(v);
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    RUN(test_round_trips);
    RUN(test_builders);
    RUN(test_refusals);
    return TEST_SUMMARY();
}
