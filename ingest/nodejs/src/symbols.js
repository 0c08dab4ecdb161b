/**
 * Symbols as users write them (BTC-USDT) versus each exchange's native form (BTCUSDT,
 * BTC-USDT-SWAP), mirrored from ingest/symbols.py so both workers label rows identically.
 */

// Longest first, so "USDT" wins over "USD" and "FDUSD" over "USD".
const QUOTES = ['FDUSD', 'USDT', 'USDC', 'BUSD', 'TUSD', 'USD', 'EUR', 'GBP', 'JPY', 'TRY', 'BRL',
  'BTC', 'ETH', 'BNB', 'XBT', 'DAI'];

/** BTCUSDT → BTC-USDT, BTC-USDT-SWAP → BTC-USDT, BTC_USDT → BTC-USDT, BTC-PERPETUAL unchanged. */
export function toUserSymbol(native) {
  const text = native.trim().toUpperCase().replaceAll('_', '-').replaceAll('/', '-');
  if (text.includes('-')) {
    const parts = text.split('-');
    if (['SWAP', 'PERP'].includes(parts.at(-1)) && parts.length >= 3) return `${parts[0]}-${parts[1]}`;
    return text;
  }
  for (const quote of QUOTES) {
    if (text.endsWith(quote) && text.length > quote.length) {
      return `${text.slice(0, -quote.length)}-${quote}`;
    }
  }
  return text;
}

/** BTC-USDT → the form the exchange's public API expects for its trade stream. */
export function toNativeSymbol(exchange, userSymbol) {
  const upper = userSymbol.toUpperCase();
  const dash = upper.indexOf('-');
  if (dash < 0) return upper;
  const base = upper.slice(0, dash);
  const quote = upper.slice(dash + 1);
  if (!quote) return upper;
  if (['coinbase', 'okex', 'okx'].includes(exchange)) return `${base}-${quote}`;
  if (['okex-swap', 'okx-swap'].includes(exchange)) return `${base}-${quote}-SWAP`;
  if (exchange === 'deribit') return quote === 'USD' ? `${base}-PERPETUAL` : `${base}_${quote}-PERPETUAL`;
  return `${base}${quote}`;
}
