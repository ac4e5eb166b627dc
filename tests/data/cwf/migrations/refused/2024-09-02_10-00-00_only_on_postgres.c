#include <string.h>
#include "dbquery.h"
#include "dbresult.h"

int up(const char* dbid) {
    if (strncmp(dbid, "postgresql", 10) == 0) {
        dbresult_t* result = dbquery(dbid, "CREATE EXTENSION IF NOT EXISTS pgcrypto", NULL);
        int res = dbresult_ok(result);
        dbresult_free(result);
        return res;
    }
    return 1;
}
