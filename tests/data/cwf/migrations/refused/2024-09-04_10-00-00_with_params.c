#include "array.h"
#include "dbquery.h"
#include "dbresult.h"

int up(const char* dbid) {
    array_t* params = array_create();
    mparams_fill_array(params, mparam_text(name, "admin"));
    dbresult_t* result = dbquery(dbid, "INSERT INTO role (name) VALUES (:name)", params);
    array_free(params);
    int res = dbresult_ok(result);
    dbresult_free(result);
    return res;
}
