#ifndef EMFLOW_CTIFF_SHIM_H
#define EMFLOW_CTIFF_SHIM_H
#include <tiffio.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

// TIFFGetField is variadic, which Swift cannot call: one typed getter per value type.
static inline int emflow_tiff_get_u32(TIFF *t, uint32_t tag, uint32_t *v) { return TIFFGetField(t, tag, v); }
static inline int emflow_tiff_get_u16(TIFF *t, uint32_t tag, uint16_t *v) { return TIFFGetField(t, tag, v); }
static inline int emflow_tiff_get_string(TIFF *t, uint32_t tag, char **v) { return TIFFGetField(t, tag, v); }
static inline int emflow_tiff_get_float(TIFF *t, uint32_t tag, float *v) { return TIFFGetField(t, tag, v); }

// Any tag as raw elements, including vendor tags libtiff does not know (it keeps those as
// "anonymous" fields whose getter takes a count first). *type is the TIFFDataType of the elements.
static inline int emflow_tiff_get_raw(TIFF *t, uint32_t tag, uint32_t *count, const void **data, int *type) {
    const TIFFField *f = TIFFFindField(t, tag, TIFF_ANY);
    if (f == NULL) return 0;
    *type = (int)TIFFFieldDataType(f);
    if (TIFFFieldPassCount(f)) {
        void *p = NULL;
        if (TIFFFieldReadCount(f) == TIFF_VARIABLE2) {
            uint32_t n = 0;
            if (!TIFFGetField(t, tag, &n, &p)) return 0;
            *count = n;
        } else {
            uint16_t n = 0;
            if (!TIFFGetField(t, tag, &n, &p)) return 0;
            *count = n;
        }
        *data = p;
        return 1;
    }
    if (*type == TIFF_ASCII) {
        char *p = NULL;
        if (!TIFFGetField(t, tag, &p) || p == NULL) return 0;
        *data = p; *count = (uint32_t)strlen(p);
        return 1;
    }
    return 0;
}

// libtiff prints errors to stderr by default; emflow reports them itself, naming the file.
// The last message is kept per thread (files are read on several worker threads at once).
// (A function-local static: Swift's importer emits inline functions, not file-scope variables.)
static inline char *emflow_tiff_error_buffer(void) { static _Thread_local char buffer[512]; return buffer; }
static void emflow_tiff_error_handler(const char *module, const char *fmt, va_list ap) {
    (void)module;
    vsnprintf(emflow_tiff_error_buffer(), 512, fmt, ap);
}
static inline void emflow_tiff_install_handlers(void) {
    TIFFSetErrorHandler(emflow_tiff_error_handler);
    TIFFSetWarningHandler(NULL);
}
static inline const char *emflow_tiff_last_error(void) { return emflow_tiff_error_buffer(); }
static inline void emflow_tiff_clear_error(void) { emflow_tiff_error_buffer()[0] = 0; }
#endif
