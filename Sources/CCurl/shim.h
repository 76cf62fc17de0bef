#ifndef EMFLOW_CCURL_SHIM_H
#define EMFLOW_CCURL_SHIM_H
// curl_easy_setopt / curl_easy_getinfo are C variadic functions, which Swift cannot call: each use
// goes through one typed wrapper here (a long, a pointer, a curl_off_t, one per callback type).
#include <curl/curl.h>

typedef size_t (*emflow_curl_data_cb)(char *ptr, size_t size, size_t nmemb, void *userdata);

static inline CURLcode emflow_curl_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode emflow_curl_setopt_ptr(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode emflow_curl_setopt_str(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode emflow_curl_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode emflow_curl_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode emflow_curl_setopt_data_cb(CURL *h, CURLoption o, emflow_curl_data_cb cb) { return curl_easy_setopt(h, o, cb); }
typedef int (*emflow_curl_seek_cb)(void *userdata, curl_off_t offset, int origin);
static inline CURLcode emflow_curl_setopt_seek_cb(CURL *h, emflow_curl_seek_cb cb) { return curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, cb); }
static inline CURLcode emflow_curl_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode emflow_curl_getinfo_off(CURL *h, CURLINFO i, curl_off_t *v) { return curl_easy_getinfo(h, i, v); }
static inline size_t emflow_curl_readfunc_abort(void) { return CURL_READFUNC_ABORT; }
static inline CURLcode emflow_curl_global_init(void) { return curl_global_init(CURL_GLOBAL_ALL); }
#endif
