#include <stdio.h>
#include "dbquery.h"
#include "dbresult.h"

int up(const char* dbid) {
    for (int i = 0; i < 12; i++) {
        char sql[256];
        snprintf(sql, sizeof(sql), "CREATE TABLE log_%02d (id integer)", i + 1);
        dbresult_t* result = dbquery(dbid, sql, NULL);
        if (!dbresult_ok(result)) { dbresult_free(result); return 0; }
        dbresult_free(result);
    }
    return 1;
}
