#include "dbquery.h"
#include "dbresult.h"
#include "log.h"

int up(const char* dbid) {
    log_info("creating the audit table\n");
    dbresult_t* result = dbquery(dbid, "CREATE TABLE audit (id integer)", NULL);
    int res = dbresult_ok(result);
    dbresult_free(result);
    return res;
}
