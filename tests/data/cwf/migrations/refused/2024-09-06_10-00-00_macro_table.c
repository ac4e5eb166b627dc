#include "dbquery.h"
#include "dbresult.h"
#define TABLE "settings"

int up(const char* dbid) {
    dbresult_t* result = dbquery(dbid, "CREATE TABLE " TABLE " (k text, v text)", NULL);
    int res = dbresult_ok(result);
    dbresult_free(result);
    return res;
}
