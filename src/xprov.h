/*-------------------------------------------------------------------------
 *
 * xprov.h
 *	  Settings shared by every module of xprov.
 *
 * Exports the GUC variables defined in xprov.c.  Each module has its own
 * header for its functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_H
#define XPROV_H

/* GUCs (xprov.c) */
extern int	xprov_max_attempts;
extern int	xprov_retry_base_ms;
extern int	xprov_retry_max_ms;
extern int	xprov_max_attributes_kb;
extern int	xprov_cursor_reset_ms;

#endif							/* XPROV_H */
