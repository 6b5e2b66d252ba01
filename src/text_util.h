/*-------------------------------------------------------------------------
 *
 * text_util.h
 *	  Small text helpers shared by the parsers of our own formats.
 *
 * Exports hex_digit_value(): the value of one hexadecimal digit.
 *
 *-------------------------------------------------------------------------
 */
#ifndef XPROV_TEXT_UTIL_H
#define XPROV_TEXT_UTIL_H

/* The value of hexadecimal digit c, or -1 if it is none. */
static inline int
hex_digit_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

#endif							/* XPROV_TEXT_UTIL_H */
