/*-------------------------------------------------------------------------
 *
 * duktape_ext.h
 *	  Helpers of ours compiled into duktape (duktape_ext.inc).
 *
 * Exports xprov_duk_define_member(): define a data member of a fresh
 * object, as JSON.parse would.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_DUKTAPE_EXT_H
#define XPROV_DUKTAPE_EXT_H

#include "duktape.h"

/* [... object key value] -> [... object]; keys distinct, object fresh */
extern void xprov_duk_define_member(duk_context *ctx);

#endif							/* XPROV_DUKTAPE_EXT_H */
