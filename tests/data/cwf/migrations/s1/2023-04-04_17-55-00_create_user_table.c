#include <stdlib.h>

#include "dbquery.h"
#include "dbresult.h"

// Written for the framework's older API: dbqueryf takes a format string.
int up(const char* dbid) {
    dbresult_t* result = dbqueryf(dbid,
        "CREATE TABLE app_user"
        "("
            "id     integer      NOT NULL PRIMARY KEY,"
            "email  varchar(100) NOT NULL DEFAULT '',"
            "name   varchar(100) NOT NULL DEFAULT '',"
            "quota  varchar(10)  NOT NULL DEFAULT '100%%'"
        ")"
    );

    int res = dbresult_ok(result);

    dbresult_free(result);

    return res;
}

int down(const char* dbid) {
    dbresult_t* result = dbqueryf(dbid, "DROP TABLE app_user");
    int res = dbresult_ok(result);
    dbresult_free(result);
    return res;
}
