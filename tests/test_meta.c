/* io metadata map: JSON round trips checked against text built independently by
 * q3r_json_set_string, order and replace-in-place, escapes and UTF-8, every typed getter's
 * accepted and refused values, list getters, copy_prefix, first_difference, and the
 * safetensors read_meta/write_meta pair through a temporary directory. */
#include "check.h"
#include "q3r/io.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int contains(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

/* Build the expected text by repeated q3r_json_set_string calls on NULL. */
static char *set_strings(const char *const *kv, size_t n) {
    char *json = NULL;
    q3r_error err = {0};
    for (size_t i = 0; i < n; i++) CHECK_OK(q3r_json_set_string(&json, kv[2 * i], kv[2 * i + 1], &err), &err);
    return json;
}

static void test_roundtrip_json(void) {
    q3r_error err = {0};
    /* Non-ASCII, quote, backslash, control characters (newline, tab, 0x01, 0x1f), a slash. */
    const char *kv[] = {
        "model",
        "vit-tiny",
        "lr",
        "0.001",
        "note",
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
        "quote\"key",
        "say \"hi\"",
        "back\\slash",
        "C:\\dir\\",
        "ctl",
        "a\nb\tc\rd\x01"
        "e\x1f"
        "f/g",
        "empty",
        "",
    };
    size_t n = sizeof kv / sizeof kv[0] / 2;
    char *want = set_strings(kv, n);

    /* Parse the set_string text, then write it back: same bytes. */
    q3r_meta m;
    q3r_meta_init(&m);
    CHECK_OK(q3r_meta_parse(&m, want, &err), &err);
    CHECK(m.count == n, "parsed %zu keys, want %zu", m.count, n);
    for (size_t i = 0; i < n && i < m.count; i++) {
        CHECK(strcmp(m.items[i].key, kv[2 * i]) == 0, "key %zu: '%s' want '%s'", i, m.items[i].key,
              kv[2 * i]);
        CHECK(strcmp(m.items[i].value, kv[2 * i + 1]) == 0, "value %zu of '%s' differs", i, kv[2 * i]);
    }
    char *got = NULL;
    CHECK_OK(q3r_meta_to_json(&m, &got, &err), &err);
    CHECK(got && strcmp(got, want) == 0, "round trip:\n got %s\nwant %s", got, want);
    free(got);
    q3r_meta_free(&m);

    /* Built with set: the same text as set_string's. */
    q3r_meta_init(&m);
    for (size_t i = 0; i < n; i++) CHECK_OK(q3r_meta_set(&m, kv[2 * i], kv[2 * i + 1], &err), &err);
    got = NULL;
    CHECK_OK(q3r_meta_to_json(&m, &got, &err), &err);
    CHECK(got && strcmp(got, want) == 0, "set then to_json:\n got %s\nwant %s", got, want);
    free(got);

    /* Hand-checked escapes for the control-character value. */
    CHECK(contains(want, "\"ctl\":\"a\\nb\\tc\\rd\\u0001e\\u001ff/g\""), "escapes in %s", want);

    /* An escaped input (\u00e9, \/) decodes to UTF-8 and is written back raw. */
    q3r_meta u;
    q3r_meta_init(&u);
    CHECK_OK(q3r_meta_parse(&u, " { \"k\" : \"caf\\u00e9 \\/ \\ud83d\\ude00\" } ", &err), &err);
    CHECK(contains(q3r_meta_get(&u, "k"), "caf\xc3\xa9 / \xf0\x9f\x98\x80"), "decoded: %s",
          q3r_meta_get(&u, "k"));
    got = NULL;
    CHECK_OK(q3r_meta_to_json(&u, &got, &err), &err);
    CHECK(got && strcmp(got, "{\"k\":\"caf\xc3\xa9 / \xf0\x9f\x98\x80\"}") == 0, "re-encoded: %s", got);
    free(got);
    q3r_meta_free(&u);

    /* Empty maps: NULL and "" parse to nothing; {} too; an empty map writes "{}". */
    q3r_meta e;
    q3r_meta_init(&e);
    CHECK_OK(q3r_meta_parse(&e, NULL, &err), &err);
    CHECK(e.count == 0, "NULL text: %zu keys", e.count);
    CHECK_OK(q3r_meta_parse(&e, "", &err), &err);
    CHECK(e.count == 0, "\"\" text: %zu keys", e.count);
    CHECK_OK(q3r_meta_parse(&e, "{}", &err), &err);
    CHECK(e.count == 0, "{}: %zu keys", e.count);
    got = NULL;
    CHECK_OK(q3r_meta_to_json(&e, &got, &err), &err);
    CHECK(got && strcmp(got, "{}") == 0, "empty map: %s", got);
    free(got);

    /* copy: deep, replaces what dst held. */
    CHECK_OK(q3r_meta_set(&e, "old", "gone", &err), &err);
    CHECK_OK(q3r_meta_copy(&e, &m, &err), &err);
    CHECK(e.count == m.count && !q3r_meta_has(&e, "old"), "copy: %zu keys, old %d", e.count,
          q3r_meta_has(&e, "old"));
    CHECK(q3r_meta_get(&e, "lr") != q3r_meta_get(&m, "lr"), "copy shares strings");
    CHECK(q3r_meta_first_difference(&m, &e, NULL) == NULL && q3r_meta_first_difference(&e, &m, NULL) == NULL,
          "copy differs");
    got = NULL;
    CHECK_OK(q3r_meta_to_json(&e, &got, &err), &err);
    CHECK(got && strcmp(got, want) == 0, "copy to_json: %s", got);
    free(got);
    CHECK_OK(q3r_meta_copy(&e, &e, &err), &err);
    CHECK(e.count == m.count, "self copy: %zu", e.count);
    q3r_meta_free(&e);
    q3r_meta_free(&e); /* twice: safe, stays empty */
    CHECK(e.count == 0 && e.items == NULL, "freed map not empty");
    q3r_meta z = {0};
    q3r_meta_free(&z);

    q3r_meta_free(&m);
    free(want);
}

static void test_order_replace_remove(void) {
    q3r_error err = {0};
    q3r_meta m;
    q3r_meta_init(&m);
    CHECK_OK(q3r_meta_set(&m, "b", "1", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "a", "2", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "c", "3", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "a", "two", &err), &err); /* replaced in place */
    CHECK(m.count == 3, "count %zu", m.count);
    char *got = NULL;
    CHECK_OK(q3r_meta_to_json(&m, &got, &err), &err);
    const char *kv[] = {"b", "1", "a", "2", "c", "3", "a", "two"};
    char *want = set_strings(kv, 4);
    CHECK(got && strcmp(got, "{\"b\":\"1\",\"a\":\"two\",\"c\":\"3\"}") == 0, "order: %s", got);
    CHECK(got && want && strcmp(got, want) == 0, "against set_string: %s vs %s", got, want);
    free(got);
    free(want);

    /* A value taken from the map itself. */
    CHECK_OK(q3r_meta_set(&m, "a", q3r_meta_get(&m, "a"), &err), &err);
    CHECK_OK(q3r_meta_set(&m, "d", q3r_meta_get(&m, "c"), &err), &err);
    CHECK(strcmp(q3r_meta_get(&m, "a"), "two") == 0 && strcmp(q3r_meta_get(&m, "d"), "3") == 0,
          "self values: a=%s d=%s", q3r_meta_get(&m, "a"), q3r_meta_get(&m, "d"));

    CHECK(q3r_meta_has(&m, "b") == 1 && q3r_meta_has(&m, "zz") == 0, "has");
    CHECK(q3r_meta_get(&m, "zz") == NULL, "absent get not NULL");
    CHECK(q3r_meta_remove(&m, "a") == 1, "remove a");
    CHECK(q3r_meta_remove(&m, "a") == 0, "remove a twice");
    CHECK(q3r_meta_remove(&m, "zz") == 0, "remove absent");
    got = NULL;
    CHECK_OK(q3r_meta_to_json(&m, &got, &err), &err);
    CHECK(got && strcmp(got, "{\"b\":\"1\",\"c\":\"3\",\"d\":\"3\"}") == 0, "after remove: %s", got);
    free(got);
    CHECK_OK(q3r_meta_set(&m, "a", "new", &err), &err); /* re-added at the end */
    CHECK(m.count == 4 && strcmp(m.items[3].key, "a") == 0, "re-added a at %zu", m.count);

    /* Many keys (growth). */
    for (int i = 0; i < 100; i++) CHECK_OK(q3r_meta_setf(&m, &err, "k", "%d", i), &err);
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        CHECK_OK(q3r_meta_setf(&m, &err, k, "%d", i * 7), &err);
    }
    CHECK(m.count == 105, "count after growth %zu", m.count);
    int v = -1;
    CHECK_OK(q3r_meta_get_int(&m, "key63", &v, &err), &err);
    CHECK(v == 441, "key63 = %d", v);
    CHECK_OK(q3r_meta_get_int(&m, "k", &v, &err), &err);
    CHECK(v == 99, "k = %d", v);

    /* setf with a value far beyond any fixed buffer. */
    char *big = malloc(3001);
    for (int i = 0; i < 3000; i++) big[i] = (char)('a' + i % 26);
    big[3000] = '\0';
    CHECK_OK(q3r_meta_setf(&m, &err, "big", "<%s|%d>", big, 42), &err);
    const char *bv = q3r_meta_get(&m, "big");
    CHECK(bv && strlen(bv) == 3000 + 5 && bv[0] == '<' && memcmp(bv + 1, big, 3000) == 0 &&
              strcmp(bv + 3001, "|42>") == 0,
          "setf long value: %zu bytes", bv ? strlen(bv) : 0);
    /* The message for a long malformed value stays one readable line. */
    CHECK(q3r_meta_get_int(&m, "big", &v, &err) == Q3R_EFORMAT && contains(err.msg, "...' is not an integer"),
          "long value message: %s", err.msg);
    free(big);

    /* Parse into a non-empty map is refused and leaves it alone. */
    CHECK(q3r_meta_parse(&m, "{\"x\":\"1\"}", &err) == Q3R_EINVAL, "parse into non-empty");
    CHECK(m.count == 106 && !q3r_meta_has(&m, "x"), "non-empty map changed");
    q3r_meta_free(&m);
}

static void test_parse_errors(void) {
    q3r_error err = {0};
    q3r_meta m;
    q3r_meta_init(&m);
    struct {
        const char *json, *msg;
    } bad[] = {
        {"{\"a\":\"1\",\"a\":\"2\"}", "duplicate key"},
        {"{\"a\":\"1\",\"lr\":0.5}", "'lr'"},
        {"{\"a\":\"1\",\"flag\":true}", "'flag'"},
        {"{\"n\":null}", "'n'"},
        {"{\"o\":{\"x\":\"1\"}}", "'o'"},
        {"{\"l\":[\"1\"]}", "'l'"},
        {"[\"a\",\"b\"]", "not a JSON object"},
        {"\"text\"", "not a JSON object"},
        {"{\"a\":\"1\"", "unterminated"},
        {"{\"a\":\"1\"} x", "trailing"},
        {"not json", "unexpected character"},
        {"{\"a\":\"\xff\"}", "UTF-8"},
        {"   ", "end of input"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err.msg[0] = '\0';
        q3r_status s = q3r_meta_parse(&m, bad[i].json, &err);
        CHECK(s == Q3R_EFORMAT, "parse %s -> %s", bad[i].json, q3r_status_name(s));
        CHECK(contains(err.msg, bad[i].msg), "parse %s: message '%s' lacks '%s'", bad[i].json, err.msg,
              bad[i].msg);
        CHECK(m.count == 0 && m.items == NULL, "parse %s left %zu keys", bad[i].json, m.count);
    }
    /* The non-string value message names the key exactly. */
    q3r_meta_parse(&m, "{\"a\":\"1\",\"lr\":0.5}", &err);
    CHECK(strcmp(err.msg, "metadata value of 'lr' is not a string") == 0, "message: %s", err.msg);
    q3r_meta_free(&m);
}

static void test_getters(void) {
    q3r_error err = {0};
    q3r_meta m;
    q3r_meta_init(&m);
    const char *kv[] = {
        "zero",    "0",
        "neg",     "-17",
        "big",     "9223372036854775807",
        "min",     "-9223372036854775808",
        "over64",  "9223372036854775808",
        "under64", "-9223372036854775809",
        "huge",    "99999999999999999999999",
        "imax",    "2147483647",
        "imin",    "-2147483648",
        "iover",   "2147483648",
        "iunder",  "-2147483649",
        "lead0",   "007",
        "negzero", "-0",
        "u64max",  "18446744073709551615",
        "u64over", "18446744073709551616",
        "x12",     "12x",
        "empty",   "",
        "exp",     "1e3",
        "space",   " 12",
        "tspace",  "12 ",
        "plus",    "+5",
        "dash",    "-",
        "frac",    "1.5",
        "d",       "-2.5e-3",
        "inf",     "inf",
        "nan",     "nan",
        "dover",   "1e400",
        "dword",   "abc",
        "hex",     "0x10",
        "dsp",     " 1.5",
    };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i += 2)
        CHECK_OK(q3r_meta_set(&m, kv[i], kv[i + 1], &err), &err);

    int64_t l = 5;
    CHECK_OK(q3r_meta_get_i64(&m, "zero", &l, &err), &err);
    CHECK(l == 0, "zero %lld", (long long)l);
    CHECK_OK(q3r_meta_get_i64(&m, "neg", &l, &err), &err);
    CHECK(l == -17, "neg %lld", (long long)l);
    CHECK_OK(q3r_meta_get_i64(&m, "big", &l, &err), &err);
    CHECK(l == INT64_MAX, "big %lld", (long long)l);
    CHECK_OK(q3r_meta_get_i64(&m, "min", &l, &err), &err);
    CHECK(l == INT64_MIN, "min %lld", (long long)l);
    CHECK_OK(q3r_meta_get_i64(&m, "lead0", &l, &err), &err);
    CHECK(l == 7, "lead0 %lld", (long long)l);
    CHECK_OK(q3r_meta_get_i64(&m, "negzero", &l, &err), &err);
    CHECK(l == 0, "negzero %lld", (long long)l);

    int v = 5;
    CHECK_OK(q3r_meta_get_int(&m, "imax", &v, &err), &err);
    CHECK(v == INT_MAX, "imax %d", v);
    CHECK_OK(q3r_meta_get_int(&m, "imin", &v, &err), &err);
    CHECK(v == INT_MIN, "imin %d", v);
    CHECK_OK(q3r_meta_get_int(&m, "neg", &v, &err), &err);
    CHECK(v == -17, "neg %d", v);

    uint64_t u = 5;
    CHECK_OK(q3r_meta_get_u64(&m, "u64max", &u, &err), &err);
    CHECK(u == UINT64_MAX, "u64max %llu", (unsigned long long)u);
    CHECK_OK(q3r_meta_get_u64(&m, "over64", &u, &err), &err);
    CHECK(u == 9223372036854775808ull, "over64 as u64 %llu", (unsigned long long)u);
    CHECK_OK(q3r_meta_get_u64(&m, "negzero", &u, &err), &err);
    CHECK(u == 0, "u64 -0 %llu", (unsigned long long)u);

    double d = 5;
    CHECK_OK(q3r_meta_get_double(&m, "frac", &d, &err), &err);
    CHECK(d == 1.5, "frac %g", d);
    CHECK_OK(q3r_meta_get_double(&m, "d", &d, &err), &err);
    CHECK(d == -2.5e-3, "d %g", d);
    CHECK_OK(q3r_meta_get_double(&m, "exp", &d, &err), &err);
    CHECK(d == 1000, "exp %g", d);
    CHECK_OK(q3r_meta_get_double(&m, "big", &d, &err), &err);
    CHECK(d == 9223372036854775807.0, "big %g", d);

    /* Refusals: status, exact message, output untouched. */
    struct {
        const char *key, *want;
    } bad_i64[] = {
        {"x12", "metadata 'x12' = '12x' is not an integer"},
        {"empty", "metadata 'empty' = '' is not an integer"},
        {"exp", "metadata 'exp' = '1e3' is not an integer"},
        {"space", "metadata 'space' = ' 12' is not an integer"},
        {"tspace", "metadata 'tspace' = '12 ' is not an integer"},
        {"plus", "metadata 'plus' = '+5' is not an integer"},
        {"dash", "metadata 'dash' = '-' is not an integer"},
        {"frac", "metadata 'frac' = '1.5' is not an integer"},
        {"over64",
         "metadata 'over64' = '9223372036854775808' is not an integer (outside the range of int64)"},
        {"under64",
         "metadata 'under64' = '-9223372036854775809' is not an integer (outside the range of int64)"},
        {"huge",
         "metadata 'huge' = '99999999999999999999999' is not an integer (outside the range of int64)"},
        {"absent", "metadata has no 'absent'"},
    };
    for (size_t i = 0; i < sizeof bad_i64 / sizeof bad_i64[0]; i++) {
        l = 5;
        q3r_status s = q3r_meta_get_i64(&m, bad_i64[i].key, &l, &err);
        CHECK(s == Q3R_EFORMAT && l == 5, "get_i64 %s -> %s, %lld", bad_i64[i].key, q3r_status_name(s),
              (long long)l);
        CHECK(strcmp(err.msg, bad_i64[i].want) == 0, "get_i64 %s: '%s'", bad_i64[i].key, err.msg);
    }
    const char *bad_int[] = {"x12", "empty", "exp", "iover", "iunder", "big", "min", "huge", "absent"};
    for (size_t i = 0; i < sizeof bad_int / sizeof bad_int[0]; i++) {
        v = 5;
        q3r_status s = q3r_meta_get_int(&m, bad_int[i], &v, &err);
        CHECK(s == Q3R_EFORMAT && v == 5, "get_int %s -> %s, %d", bad_int[i], q3r_status_name(s), v);
        CHECK(contains(err.msg, bad_int[i]) &&
                  (contains(err.msg, "is not an integer") || contains(err.msg, "has no")),
              "get_int %s: '%s'", bad_int[i], err.msg);
    }
    q3r_meta_get_int(&m, "iover", &v, &err);
    CHECK(strcmp(err.msg, "metadata 'iover' = '2147483648' is not an integer (outside the range of int)") ==
              0,
          "%s", err.msg);
    q3r_meta_get_int(&m, "exp", &v, &err);
    CHECK(strcmp(err.msg, "metadata 'exp' = '1e3' is not an integer") == 0, "%s", err.msg);
    const char *bad_u64[] = {"neg", "u64over", "huge", "x12", "empty", "plus", "min", "absent"};
    for (size_t i = 0; i < sizeof bad_u64 / sizeof bad_u64[0]; i++) {
        u = 5;
        q3r_status s = q3r_meta_get_u64(&m, bad_u64[i], &u, &err);
        CHECK(s == Q3R_EFORMAT && u == 5, "get_u64 %s -> %s", bad_u64[i], q3r_status_name(s));
        CHECK(contains(err.msg, bad_u64[i]), "get_u64 %s: '%s'", bad_u64[i], err.msg);
    }
    q3r_meta_get_u64(&m, "neg", &u, &err);
    CHECK(strcmp(err.msg, "metadata 'neg' = '-17' is not an integer (outside the range of uint64)") == 0,
          "%s", err.msg);
    const char *bad_d[] = {"inf", "nan", "dover", "dword", "empty", "dsp", "tspace", "x12", "absent"};
    for (size_t i = 0; i < sizeof bad_d / sizeof bad_d[0]; i++) {
        d = 5;
        q3r_status s = q3r_meta_get_double(&m, bad_d[i], &d, &err);
        CHECK(s == Q3R_EFORMAT && d == 5, "get_double %s -> %s, %g", bad_d[i], q3r_status_name(s), d);
        CHECK(contains(err.msg, bad_d[i]), "get_double %s: '%s'", bad_d[i], err.msg);
    }
    q3r_meta_get_double(&m, "inf", &d, &err);
    CHECK(strcmp(err.msg, "metadata 'inf' = 'inf' is not a finite number") == 0, "%s", err.msg);
    q3r_meta_get_double(&m, "absent", &d, &err);
    CHECK(strcmp(err.msg, "metadata has no 'absent'") == 0, "%s", err.msg);
    q3r_meta_free(&m);
}

static void test_lists(void) {
    q3r_error err = {0};
    q3r_meta m;
    q3r_meta_init(&m);
    CHECK_OK(q3r_meta_set(&m, "ranks", "3,0,12,-4", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "one", "7", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "none", "", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "spaced", "3, 4", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "hole", "3,,4", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "trail", "3,4,", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "iover", "1,2147483648", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "fl", "0.5,-2,1e-3,3", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "finf", "1,inf", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "fnan", "nan,1", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "fbig", "1,1e39", &err), &err); /* finite double, not a finite float */

    CHECK(q3r_meta_list_count(&m, "ranks") == 4, "count ranks %d", q3r_meta_list_count(&m, "ranks"));
    CHECK(q3r_meta_list_count(&m, "one") == 1, "count one");
    CHECK(q3r_meta_list_count(&m, "none") == 0, "count empty");
    CHECK(q3r_meta_list_count(&m, "absent") == 0, "count absent");
    CHECK(q3r_meta_list_count(&m, "hole") == 3 && q3r_meta_list_count(&m, "trail") == 3, "count holes");

    int r[4] = {9, 9, 9, 9};
    CHECK_OK(q3r_meta_get_ints(&m, "ranks", r, 4, &err), &err);
    CHECK(r[0] == 3 && r[1] == 0 && r[2] == 12 && r[3] == -4, "ranks %d %d %d %d", r[0], r[1], r[2], r[3]);
    CHECK_OK(q3r_meta_get_ints(&m, "one", r, 1, &err), &err);
    CHECK(r[0] == 7, "one %d", r[0]);
    CHECK_OK(q3r_meta_get_ints(&m, "none", r, 0, &err), &err);

    struct {
        const char *key;
        int n;
    } bad[] = {{"ranks", 3},  {"ranks", 5}, {"one", 2},   {"none", 1}, {"one", 0},
               {"spaced", 2}, {"hole", 3},  {"trail", 3}, {"iover", 2}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int o[8] = {9, 9, 9, 9, 9, 9, 9, 9};
        q3r_status s = q3r_meta_get_ints(&m, bad[i].key, o, bad[i].n, &err);
        CHECK(s == Q3R_EFORMAT, "get_ints %s/%d -> %s", bad[i].key, bad[i].n, q3r_status_name(s));
        char want[64];
        snprintf(want, sizeof want, "is not a list of %d integers", bad[i].n);
        CHECK(contains(err.msg, want) && contains(err.msg, bad[i].key), "get_ints %s/%d: %s", bad[i].key,
              bad[i].n, err.msg);
        int same = 1;
        for (int k = 0; k < 8; k++) same &= o[k] == 9;
        CHECK(same, "get_ints %s/%d wrote its output on failure", bad[i].key, bad[i].n);
    }
    q3r_meta_get_ints(&m, "ranks", r, 3, &err);
    CHECK(strcmp(err.msg, "metadata 'ranks' = '3,0,12,-4' is not a list of 3 integers") == 0, "%s", err.msg);
    CHECK(q3r_meta_get_ints(&m, "ranks", r, -1, &err) == Q3R_EINVAL, "n < 0 accepted");
    CHECK(q3r_meta_get_ints(&m, "absent", r, 1, &err) == Q3R_EFORMAT &&
              strcmp(err.msg, "metadata has no 'absent'") == 0,
          "absent list: %s", err.msg);

    float f[4] = {9, 9, 9, 9};
    CHECK_OK(q3r_meta_get_floats(&m, "fl", f, 4, &err), &err);
    CHECK(f[0] == 0.5f && f[1] == -2.0f && f[2] == 1e-3f && f[3] == 3.0f, "floats %g %g %g %g", f[0], f[1],
          f[2], f[3]);
    CHECK_OK(q3r_meta_get_floats(&m, "ranks", f, 4, &err), &err); /* integers are numbers */
    CHECK(f[2] == 12.0f, "ranks as floats %g", f[2]);
    const char *fbad[] = {"finf", "fnan", "fbig", "hole", "spaced"};
    for (size_t i = 0; i < sizeof fbad / sizeof fbad[0]; i++) {
        float o[2] = {9, 9};
        q3r_status s = q3r_meta_get_floats(&m, fbad[i], o, 2, &err);
        CHECK(s == Q3R_EFORMAT && o[0] == 9 && o[1] == 9, "get_floats %s -> %s", fbad[i], q3r_status_name(s));
        CHECK(contains(err.msg, "is not a list of 2 numbers"), "get_floats %s: %s", fbad[i], err.msg);
    }
    CHECK(q3r_meta_get_floats(&m, "fl", f, 3, &err) == Q3R_EFORMAT &&
              strcmp(err.msg, "metadata 'fl' = '0.5,-2,1e-3,3' is not a list of 3 numbers") == 0,
          "float count: %s", err.msg);
    q3r_meta_free(&m);
}

static void test_prefix_difference(void) {
    q3r_error err = {0};
    q3r_meta src, dst;
    q3r_meta_init(&src);
    q3r_meta_init(&dst);
    CHECK_OK(q3r_meta_parse(&src,
                            "{\"model.dim\":\"64\",\"opt.lr\":\"0.1\",\"model.depth\":\"4\",\"model\":"
                            "\"vit\",\"mode\":\"x\"}",
                            &err),
             &err);
    CHECK_OK(q3r_meta_parse(&dst, "{\"run\":\"a\",\"model.depth\":\"2\"}", &err), &err);
    CHECK_OK(q3r_meta_copy_prefix(&dst, &src, "model.", &err), &err);
    char *got = NULL;
    CHECK_OK(q3r_meta_to_json(&dst, &got, &err), &err);
    /* model.depth replaced in place; model.dim appended; "model" and "mode" not copied. */
    CHECK(got && strcmp(got, "{\"run\":\"a\",\"model.depth\":\"4\",\"model.dim\":\"64\"}") == 0,
          "copy_prefix: %s", got);
    free(got);
    q3r_meta all;
    q3r_meta_init(&all);
    CHECK_OK(q3r_meta_copy_prefix(&all, &src, "", &err), &err);
    CHECK(all.count == src.count && q3r_meta_first_difference(&src, &all, NULL) == NULL,
          "prefix \"\" copies all");
    CHECK_OK(q3r_meta_copy_prefix(&all, &all, "model", &err), &err); /* into itself: no change */
    CHECK(all.count == src.count, "self copy_prefix: %zu", all.count);
    q3r_meta_free(&all);

    /* first_difference: absent key, other value, extra keys in have ignored. */
    q3r_meta want, have;
    q3r_meta_init(&want);
    q3r_meta_init(&have);
    CHECK_OK(q3r_meta_parse(&want, "{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"}", &err), &err);
    CHECK_OK(q3r_meta_parse(&have, "{\"c\":\"3\",\"extra\":\"9\",\"a\":\"1\",\"b\":\"2\"}", &err), &err);
    const char *hv = "unset";
    CHECK(q3r_meta_first_difference(&want, &have, &hv) == NULL && hv == NULL, "same: %s", hv ? hv : "NULL");
    CHECK_OK(q3r_meta_set(&have, "b", "20", &err), &err);
    const char *k = q3r_meta_first_difference(&want, &have, &hv);
    CHECK(k && strcmp(k, "b") == 0 && hv && strcmp(hv, "20") == 0, "b differs: %s = %s", k ? k : "NULL",
          hv ? hv : "NULL");
    q3r_meta_remove(&have, "a");
    k = q3r_meta_first_difference(&want, &have, &hv);
    CHECK(k && strcmp(k, "a") == 0 && hv == NULL, "a absent: %s", k ? k : "NULL");
    CHECK(q3r_meta_first_difference(&want, &have, NULL) == k, "NULL have_value");
    q3r_meta empty;
    q3r_meta_init(&empty);
    CHECK(q3r_meta_first_difference(&empty, &have, &hv) == NULL, "empty want");
    q3r_meta_free(&want);
    q3r_meta_free(&have);
    q3r_meta_free(&src);
    q3r_meta_free(&dst);
}

static void test_safetensors(const char *dir) {
    q3r_error err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/meta.safetensors", dir);
    q3r_tensor_list a, b;
    q3r_tensor_list_init(&a);
    q3r_tensor_list_init(&b);
    float w[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    CHECK_OK(q3r_tensor_list_add(&a, "w", Q3R_F32, 2, shape, w, &err), &err);
    q3r_meta m, r;
    q3r_meta_init(&m);
    q3r_meta_init(&r);
    CHECK_OK(q3r_meta_set(&m, "model", "vit-tiny", &err), &err);
    CHECK_OK(q3r_meta_setf(&m, &err, "step", "%d", 1200), &err);
    CHECK_OK(q3r_meta_set(&m, "note", "caf\xc3\xa9 \"q\" \\ \t", &err), &err);
    CHECK_OK(q3r_meta_set(&m, "ranks", "4,8,16", &err), &err);
    CHECK_OK(q3r_safetensors_write_meta(path, &a, &m, &err), &err);

    /* Read back as a map: same keys, values and order. */
    CHECK_OK(q3r_meta_set(&r, "stale", "x", &err), &err); /* replaced by the file's */
    CHECK_OK(q3r_safetensors_read_meta(path, &b, &r, &err), &err);
    CHECK(b.count == 1 && q3r_tensor_list_find(&b, "w") &&
              memcmp(q3r_tensor_list_find(&b, "w")->data, w, sizeof w) == 0,
          "tensors read back: %zu", b.count);
    CHECK(r.count == m.count, "meta read back: %zu keys", r.count);
    for (size_t i = 0; i < m.count && i < r.count; i++)
        CHECK(strcmp(r.items[i].key, m.items[i].key) == 0 && strcmp(r.items[i].value, m.items[i].value) == 0,
              "entry %zu: %s", i, r.items[i].key);
    int64_t step = 0;
    CHECK_OK(q3r_meta_get_i64(&r, "step", &step, &err), &err);
    CHECK(step == 1200, "step %lld", (long long)step);
    int ranks[3] = {0};
    CHECK_OK(q3r_meta_get_ints(&r, "ranks", ranks, 3, &err), &err);
    CHECK(ranks[0] == 4 && ranks[1] == 8 && ranks[2] == 16, "ranks");

    /* The file's metadata text, read the old way, is what to_json gives. */
    char *old = NULL, *mine = NULL;
    q3r_tensor_list c;
    q3r_tensor_list_init(&c);
    CHECK_OK(q3r_safetensors_read(path, &c, &old, &err), &err);
    CHECK_OK(q3r_meta_to_json(&m, &mine, &err), &err);
    CHECK(old && mine && strcmp(old, mine) == 0, "file metadata %s vs %s", old, mine);
    q3r_tensor_list_free(&c);
    free(old);
    free(mine);

    /* No metadata: NULL and an empty map both write none; reading gives an empty map. */
    q3r_meta e;
    q3r_meta_init(&e);
    CHECK_OK(q3r_safetensors_write_meta(path, &a, &e, &err), &err);
    q3r_tensor_list_init(&c);
    old = (char *)"sentinel";
    CHECK_OK(q3r_safetensors_read(path, &c, &old, &err), &err);
    CHECK(old == NULL, "empty map wrote metadata %s", old ? old : "");
    q3r_tensor_list_free(&c);
    CHECK_OK(q3r_safetensors_write_meta(path, &a, NULL, &err), &err);
    CHECK_OK(q3r_safetensors_read_meta(path, &c, &r, &err), &err);
    CHECK(r.count == 0 && c.count == 1, "no metadata: %zu keys, %zu tensors", r.count, c.count);
    q3r_tensor_list_free(&c);

    /* A value that is not UTF-8 is refused by the writer, naming the file. */
    CHECK_OK(q3r_meta_set(&e, "bad", "\xff", &err), &err);
    CHECK(q3r_safetensors_write_meta(path, &a, &e, &err) == Q3R_EFORMAT && contains(err.msg, path),
          "invalid UTF-8 written: %s", err.msg);
    q3r_meta_free(&e);

    /* A missing file: error naming it; out and meta unchanged. */
    char missing[1300];
    snprintf(missing, sizeof missing, "%s/missing.safetensors", dir);
    CHECK_OK(q3r_meta_set(&r, "keep", "1", &err), &err);
    size_t nb = b.count;
    CHECK(q3r_safetensors_read_meta(missing, &b, &r, &err) == Q3R_EIO && contains(err.msg, missing),
          "missing file: %s", err.msg);
    CHECK(b.count == nb && r.count == 1 && q3r_meta_has(&r, "keep"), "outputs changed on failure");
    unlink(path);

    q3r_meta_free(&m);
    q3r_meta_free(&r);
    q3r_tensor_list_free(&a);
    q3r_tensor_list_free(&b);
}

int main(void) {
    const char *tmp = getenv("TMPDIR");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/q3r_test_meta_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror(dir);
        return 2;
    }
    test_roundtrip_json();
    test_order_replace_remove();
    test_parse_errors();
    test_getters();
    test_lists();
    test_prefix_difference();
    test_safetensors(dir);
    if (rmdir(dir) != 0) {
        perror(dir);
        check_failures++;
    }
    return check_report("test_meta");
}
