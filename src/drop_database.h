/*-------------------------------------------------------------------------
 *
 * drop_database.h
 *	  Stop the workers of a database that is being dropped (drop_database.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef DROP_DATABASE_H
#define DROP_DATABASE_H

extern void drop_database_install_hook(void);

#endif							/* DROP_DATABASE_H */
