/* qc_error.c - names for the shared error-code space. */
#include "qc_error.h"

const char *qc_strerror(int code)
{
    switch (code) {
#define QC_ERROR_TEXT(name, value, text)                                                           \
    case value:                                                                                    \
        return text;
        QC_ERRORS(QC_ERROR_TEXT)
#undef QC_ERROR_TEXT
    }
    return "unknown error";
}

const char *qc_errname(int code)
{
    switch (code) {
#define QC_ERROR_NAME(name, value, text)                                                           \
    case value:                                                                                    \
        return #name;
        QC_ERRORS(QC_ERROR_NAME)
#undef QC_ERROR_NAME
    }
    return "QC_EUNKNOWN";
}
