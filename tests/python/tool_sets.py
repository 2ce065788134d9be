"""The tools the tool-calling tests offer: OpenAI-shaped function tools, and the validity run's
20 tool sets and 10 prompts."""


def function(name, description, properties, required):
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


WEATHER = function("get_weather", "Get the current weather in a city",
                   {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   ["city"])
ADD = function("add", "Add two numbers", {"a": {"type": "number"}, "b": {"type": "number"}}, ["a", "b"])


# Validity: tool sets with nested, enum, array and required parameters, `required` and `auto`.
TOOL_SETS = [
    [WEATHER, ADD],
    [function("search_flights", "Find flights", {
        "from": {"type": "string"}, "to": {"type": "string"},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "cabin": {"enum": ["economy", "business", "first"]}}, ["from", "to", "date"])],
    [function("create_event", "Add a calendar event", {
        "title": {"type": "string", "maxLength": 40},
        "when": {"type": "object", "properties": {"day": {"type": "integer", "minimum": 1, "maximum": 31},
                                                   "hour": {"type": "integer", "minimum": 0, "maximum": 23}},
                 "required": ["day", "hour"]},
        "attendees": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4}},
        ["title", "when"])],
    [function("set_lights", "Switch lights", {"room": {"enum": ["kitchen", "hall", "bedroom"]},
                                              "on": {"type": "boolean"}}, ["room", "on"]),
     function("set_heating", "Set the heating", {"celsius": {"type": "number", "minimum": 5, "maximum": 30}},
              ["celsius"])],
    [function("tag_photo", "Tag a photo", {"tags": {"type": "array", "items": {"enum": ["cat", "dog", "tree", "car"]}},
                                          "rating": {"type": "integer", "minimum": 1, "maximum": 5}}, ["tags"])],
    [function("send_mail", "Send an e-mail", {"to": {"type": "string", "maxLength": 40},
                                               "subject": {"type": "string", "maxLength": 40},
                                               "urgent": {"type": "boolean"}}, ["to", "subject"]),
     WEATHER],
    [function("convert", "Convert units", {"value": {"type": "number"}, "from_unit": {"enum": ["km", "mi", "m"]},
                                           "to_unit": {"enum": ["km", "mi", "m"]}}, ["value", "from_unit", "to_unit"])],
    [function("order_pizza", "Order a pizza", {
        "size": {"enum": ["small", "medium", "large"]},
        "toppings": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "address": {"type": "object", "properties": {"street": {"type": "string", "maxLength": 30},
                                                     "number": {"type": "integer", "minimum": 1, "maximum": 999}},
                    "required": ["street"]}}, ["size", "address"])],
    [function("lookup_word", "Dictionary lookup", {"word": {"type": "string", "maxLength": 30},
                                                    "language": {"enum": ["en", "fr", "de"]}}, ["word"]),
     ADD],
    [function("book_table", "Book a restaurant table", {"people": {"type": "integer", "minimum": 1, "maximum": 12},
                                                        "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
                                                        "name": {"type": "string", "maxLength": 30}},
              ["people", "time", "name"])],
]
# Ten more: deeper nesting, arrays of objects, enums of numbers, several required fields.
TOOL_SETS += [
    [function("add_contact", "Save a contact", {
        "name": {"type": "string", "maxLength": 30},
        "phones": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "kind": {"enum": ["home", "work", "mobile"]}, "number": {"type": "string", "pattern": "^[0-9 +]{3,16}$"}},
            "required": ["kind", "number"]}}}, ["name", "phones"])],
    [function("rate_movie", "Rate a movie", {"title": {"type": "string", "maxLength": 40},
                                             "stars": {"enum": [1, 2, 3, 4, 5]}}, ["title", "stars"]),
     function("list_movies", "List movies", {"genre": {"enum": ["drama", "comedy", "horror"]}}, [])],
    [function("plan_trip", "Plan a trip", {
        "legs": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20}, "nights": {"type": "integer", "minimum": 1, "maximum": 14}},
            "required": ["city", "nights"]}},
        "budget": {"type": "object", "properties": {
            "amount": {"type": "number", "minimum": 0}, "currency": {"enum": ["EUR", "USD", "GBP"]}},
            "required": ["amount", "currency"]}}, ["legs"])],
    [function("set_alarm", "Set an alarm", {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                            "minute": {"type": "integer", "minimum": 0, "maximum": 59},
                                            "days": {"type": "array", "items": {"enum": ["mon", "tue", "wed", "thu",
                                                                                         "fri", "sat", "sun"]},
                                                     "maxItems": 7}}, ["hour", "minute"]),
     function("cancel_alarm", "Cancel an alarm", {"id": {"type": "integer", "minimum": 1}}, ["id"])],
    [function("translate", "Translate text", {"text": {"type": "string", "maxLength": 60},
                                              "to": {"enum": ["en", "fr", "de", "es", "it"]},
                                              "formal": {"type": "boolean"}}, ["text", "to"])],
    [function("create_issue", "File a bug", {
        "title": {"type": "string", "maxLength": 40}, "severity": {"enum": ["low", "medium", "high"]},
        "labels": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "assignee": {"type": "object", "properties": {"login": {"type": "string", "maxLength": 20}},
                     "required": ["login"]}}, ["title", "severity"]),
     WEATHER],
    [function("transfer_money", "Transfer money", {
        "from_account": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
        "to_account": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
        "amount": {"type": "number", "minimum": 0.01, "maximum": 10000}}, ["from_account", "to_account", "amount"])],
    [function("search_recipes", "Find recipes", {
        "ingredients": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "string", "maxLength": 16}},
        "diet": {"enum": ["any", "vegetarian", "vegan"]}, "max_minutes": {"type": "integer", "minimum": 5,
                                                                         "maximum": 180}}, ["ingredients"]),
     ADD],
    [function("water_plants", "Water the plants", {"zones": {"type": "array", "items": {"enum": [1, 2, 3, 4]},
                                                             "minItems": 1, "maxItems": 4},
                                                   "litres": {"type": "number", "minimum": 0.5, "maximum": 20}},
              ["zones"])],
    [function("get_stock", "Stock price", {"symbol": {"type": "string", "pattern": "^[A-Z]{1,5}$"}}, ["symbol"]),
     function("get_news", "Latest news", {"topic": {"type": "string", "maxLength": 20},
                                          "count": {"type": "integer", "minimum": 1, "maximum": 5}}, ["topic"]),
     function("get_time", "Current time", {"zone": {"enum": ["UTC", "CET", "EST"]}}, [])],
]
PROMPTS = ["What is the weather in Oslo?", "Please book something for tomorrow.", "Add 12 and 30.",
           "Turn on the kitchen lights.", "I need a flight from Paris to Rome on 2026-05-01.",
           "Tag this photo of a cat under a tree.", "Send a mail to Ann about lunch.", "How far is 10 km in miles?",
           "Order a large pizza to Main Street 5.", "Book a table for four at 19:30 for Lee."]
