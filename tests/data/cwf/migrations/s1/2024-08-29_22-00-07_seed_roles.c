#include <stdlib.h>

#include "dbquery.h"
#include "dbresult.h"

/* Several queries; stop at the first that fails. "Quotes" in a comment: ; */
int up(const char* dbid)
{
    dbresult_t* result = dbquery(dbid,
        "CREATE TABLE role_note (\n"
        "\tid   integer NOT NULL PRIMARY KEY,\n"
        "\tnote varchar(200) NOT NULL DEFAULT ''\n"
        ")", NULL);
    if (!dbresult_ok(result)) {
        dbresult_free(result);
        return 0;
    }
    dbresult_free(result);

    result = dbquery(dbid, "INSERT INTO role (id, name) VALUES (1, 'admin'), (2, 'O''Brien''s \"crew\" \\ back\tslash')", NULL);
    if (!dbresult_ok(result)) { dbresult_free(result); return 0; }
    dbresult_free(result);

    // octal and hex escapes: \101 is A, \x42 is B (a hex escape ends where its literal does)
    result = dbquery(dbid, "INSERT INTO role_note (id, note) VALUES (1, '\101\x42" "C caf\xc3\xa9 -- not a comment; "
                           "still the same string')", NULL);
    int ok = dbresult_ok(result);
    dbresult_free(result);
    return ok;
}
